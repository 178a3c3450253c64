"""Log-likelihood ops in Triton: diagonal Gaussian and Bernoulli-with-logits, summed per row.

Math (rows of length D, upstream gradient ``g [R]``):

* Gaussian: ``lp = -0.5 * sum_d (log 2pi + logvar + (x - mu)^2 exp(-logvar))``;
  with ``w = exp(-logvar)`` and ``t = g (x - mu) w``::

      d/dx = -t,   d/dmu = t,   d/dlogvar = -0.5 * g * (1 - (x - mu)^2 w)

* Bernoulli with logits ``l``: ``lp = sum_d (x l - softplus(l))``, with the stable
  ``softplus(l) = max(l, 0) + log1p(exp(-|l|))``::

      d/dx = g * l,   d/dl = g * (x - sigmoid(l))

  (the formulas of ``torch.distributions.Bernoulli(logits=l).log_prob``; PyTorch docs).

Each op: forward kernel (row sums inside) + fused backward kernel + a
``torch.library.triton_op`` launcher each + an ``autograd.Function`` with
``setup_context`` and ``vmap``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from torch.library import register_vmap, triton_op, wrap_triton

from ._common import (
    NAMESPACE,
    batch_args,
    contiguous,
    load_acc,
    log1p_small,
    placeholder,
    row_blocks,
    row_sum,
    rows_of,
    store_out,
    zeros_acc,
)

__all__ = ["bernoulli_log_prob", "normal_log_prob"]

_LOG_2PI: tl.constexpr = tl.constexpr(math.log(2.0 * math.pi))


def _outs_dims(*needed: bool) -> tuple[int | None, ...]:
    return tuple(0 if n else None for n in needed)


# =========================================================================== Gaussian
@triton.jit
def _normal_lp_fwd_kernel(
    x_ptr,  # [R, D] points
    mu_ptr,  # [R, D] mean
    lv_ptr,  # [R, D] log variance
    lp_ptr,  # [R] out: log density per row
    R,
    D,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64) * D
    acc = zeros_acc(BLOCK_R, F64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base[:, None] + cols[None, :]
        diff = load_acc(x_ptr, offs, mask, F64) - load_acc(mu_ptr, offs, mask, F64)
        lv = load_acc(lv_ptr, offs, mask, F64)
        term = lv + _LOG_2PI + diff * diff * tl.exp(-lv)
        acc += row_sum(tl.where(mask, term, 0.0))
    store_out(lp_ptr, rows, -0.5 * acc, rmask)


@triton.jit
def _normal_lp_bwd_kernel(
    g_ptr,  # [R] upstream gradient
    x_ptr,  # [R, D] points
    mu_ptr,  # [R, D] mean
    lv_ptr,  # [R, D] log variance
    gx_ptr,  # [R, D] out (written if NEED_X)
    gmu_ptr,  # [R, D] out (written if NEED_MU)
    glv_ptr,  # [R, D] out (written if NEED_LV)
    R,
    D,
    NEED_X: tl.constexpr,
    NEED_MU: tl.constexpr,
    NEED_LV: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64) * D
    g = load_acc(g_ptr, rows, rmask, F64)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base[:, None] + cols[None, :]
        diff = load_acc(x_ptr, offs, mask, F64) - load_acc(mu_ptr, offs, mask, F64)
        w = tl.exp(-load_acc(lv_ptr, offs, mask, F64))
        t = g * diff * w
        if NEED_X:
            store_out(gx_ptr, offs, -t, mask)
        if NEED_MU:
            store_out(gmu_ptr, offs, t, mask)
        if NEED_LV:
            glv = -0.5 * g * (1.0 - diff * diff * w)
            store_out(glv_ptr, offs, glv, mask)


@triton_op(f"{NAMESPACE}::normal_log_prob_fwd", mutates_args=())
def _normal_lp_fwd(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    x, mu, logvar = contiguous(x, mu, logvar)
    r, d = rows_of(x)
    if d == 0:
        return x.new_zeros(x.shape[:-1])
    lp = x.new_empty(x.shape[:-1])
    if r:
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_normal_lp_fwd_kernel)[(triton.cdiv(r, block_r),)](
            x,
            mu,
            logvar,
            lp,
            r,
            d,
            F64=x.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return lp


@triton_op(f"{NAMESPACE}::normal_log_prob_bwd", mutates_args=())
def _normal_lp_bwd(
    g: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    need_x: bool,
    need_mu: bool,
    need_logvar: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, x, mu, logvar = contiguous(g, x, mu, logvar)
    gx = torch.empty_like(x) if need_x else placeholder(x)
    gmu = torch.empty_like(x) if need_mu else placeholder(x)
    glv = torch.empty_like(x) if need_logvar else placeholder(x)
    r, d = rows_of(x)
    if r and d and (need_x or need_mu or need_logvar):
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_normal_lp_bwd_kernel)[(triton.cdiv(r, block_r),)](
            g,
            x,
            mu,
            logvar,
            gx,
            gmu,
            glv,
            r,
            d,
            NEED_X=need_x,
            NEED_MU=need_mu,
            NEED_LV=need_logvar,
            F64=x.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return gx, gmu, glv


class NormalLogProb(torch.autograd.Function):
    """Diagonal Gaussian log density per row: ``[..., D] x3 -> [...]``."""

    @staticmethod
    def forward(x, mu, logvar):
        return _normal_lp_fwd(x, mu, logvar)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable  # the backward kernels have no derivatives
    def backward(ctx, g):
        x, mu, logvar = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:3])
        grads = _normal_lp_bwd(g, x, mu, logvar, *need)
        return tuple(gr if n else None for gr, n in zip(grads, need, strict=True))

    @staticmethod
    def vmap(info, in_dims, x, mu, logvar):
        x, mu, logvar = batch_args(info, in_dims, (x, mu, logvar))
        return NormalLogProb.apply(x, mu, logvar), 0


def normal_log_prob(x, mu, logvar):
    """``log N(x; mu, diag exp(logvar))`` summed over the last dim."""
    return NormalLogProb.apply(x, mu, logvar)


@register_vmap(_normal_lp_bwd)
def _normal_lp_bwd_vmap(info, in_dims, g, x, mu, logvar, need_x, need_mu, need_logvar):
    g, x, mu, logvar = batch_args(info, in_dims[:4], (g, x, mu, logvar))
    return _normal_lp_bwd(g, x, mu, logvar, need_x, need_mu, need_logvar), _outs_dims(need_x, need_mu, need_logvar)


# =========================================================================== Bernoulli
@triton.jit
def _softplus_sigmoid(logits):
    """``(softplus(l), sigmoid(l))`` computed stably from ``e = exp(-|l|)`` in (0, 1]."""
    e = tl.exp(-tl.abs(logits))
    softplus = tl.maximum(logits, 0.0) + log1p_small(e)
    inv = 1.0 / (1.0 + e)
    sigmoid = tl.where(logits >= 0, inv, e * inv)
    return softplus, sigmoid


@triton.jit
def _bernoulli_lp_fwd_kernel(
    x_ptr,  # [R, D] observations in [0, 1]
    l_ptr,  # [R, D] logits
    lp_ptr,  # [R] out: log-likelihood per row
    R,
    D,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64) * D
    acc = zeros_acc(BLOCK_R, F64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base[:, None] + cols[None, :]
        x = load_acc(x_ptr, offs, mask, F64)
        logits = load_acc(l_ptr, offs, mask, F64)
        softplus, _ = _softplus_sigmoid(logits)
        acc += row_sum(tl.where(mask, x * logits - softplus, 0.0))
    store_out(lp_ptr, rows, acc, rmask)


@triton.jit
def _bernoulli_lp_bwd_kernel(
    g_ptr,  # [R] upstream gradient
    x_ptr,  # [R, D] observations
    l_ptr,  # [R, D] logits
    gx_ptr,  # [R, D] out: g * logits (written if NEED_X)
    gl_ptr,  # [R, D] out: g * (x - sigmoid(logits)) (written if NEED_L)
    R,
    D,
    NEED_X: tl.constexpr,
    NEED_L: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64) * D
    g = load_acc(g_ptr, rows, rmask, F64)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base[:, None] + cols[None, :]
        logits = load_acc(l_ptr, offs, mask, F64)
        if NEED_X:
            store_out(gx_ptr, offs, g * logits, mask)
        if NEED_L:
            x = load_acc(x_ptr, offs, mask, F64)
            _, sigmoid = _softplus_sigmoid(logits)
            store_out(gl_ptr, offs, g * (x - sigmoid), mask)


@triton_op(f"{NAMESPACE}::bernoulli_log_prob_fwd", mutates_args=())
def _bernoulli_lp_fwd(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    x, logits = contiguous(x, logits)
    r, d = rows_of(x)
    if d == 0:
        return x.new_zeros(x.shape[:-1])
    lp = x.new_empty(x.shape[:-1])
    if r:
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_bernoulli_lp_fwd_kernel)[(triton.cdiv(r, block_r),)](
            x,
            logits,
            lp,
            r,
            d,
            F64=x.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return lp


@triton_op(f"{NAMESPACE}::bernoulli_log_prob_bwd", mutates_args=())
def _bernoulli_lp_bwd(
    g: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, need_x: bool, need_logits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    g, x, logits = contiguous(g, x, logits)
    gx = torch.empty_like(x) if need_x else placeholder(x)
    gl = torch.empty_like(x) if need_logits else placeholder(x)
    r, d = rows_of(x)
    if r and d and (need_x or need_logits):
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_bernoulli_lp_bwd_kernel)[(triton.cdiv(r, block_r),)](
            g,
            x,
            logits,
            gx,
            gl,
            r,
            d,
            NEED_X=need_x,
            NEED_L=need_logits,
            F64=x.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return gx, gl


class BernoulliLogProb(torch.autograd.Function):
    """Bernoulli-with-logits log-likelihood per row: ``[..., D] x2 -> [...]``."""

    @staticmethod
    def forward(x, logits):
        return _bernoulli_lp_fwd(x, logits)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable  # the backward kernels have no derivatives
    def backward(ctx, g):
        x, logits = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:2])
        grads = _bernoulli_lp_bwd(g, x, logits, *need)
        return tuple(gr if n else None for gr, n in zip(grads, need, strict=True))

    @staticmethod
    def vmap(info, in_dims, x, logits):
        x, logits = batch_args(info, in_dims, (x, logits))
        return BernoulliLogProb.apply(x, logits), 0


def bernoulli_log_prob(x, logits):
    """``sum(x * logits - softplus(logits))`` over the last dim."""
    return BernoulliLogProb.apply(x, logits)


@register_vmap(_bernoulli_lp_bwd)
def _bernoulli_lp_bwd_vmap(info, in_dims, g, x, logits, need_x, need_logits):
    g, x, logits = batch_args(info, in_dims[:3], (g, x, logits))
    return _bernoulli_lp_bwd(g, x, logits, need_x, need_logits), _outs_dims(need_x, need_logits)
