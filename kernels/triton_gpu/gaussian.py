"""Gaussian ops in Triton: noise, reparameterized sample, KL to N(0, I), and the fused pair.

Math (sigma = exp(logvar / 2), rows of length D; Kingma & Welling 2014, sec. 2.4
and appendix B):

* ``z = mu + sigma * eps``; when no ``eps`` is given, ``eps`` at the row-major
  index ``i`` of ``z`` is ``tl.randn(seed, i)`` (drawn by the port
  :func:`._common.philox_randn`, equal to :mod:`kernels.philox`'s stream). Under
  ``torch.func.vmap`` the index is taken within one sample, so every sample
  draws the same noise, as a Python loop over the samples would;
* ``KL = 0.5 * sum_d (sigma^2 + mu^2 - 1 - logvar)``;
* backward of the fused op, with upstream ``gz [R, D]`` and ``gkl [R]``::

      d/dmu     = gz + gkl * mu
      d/dlogvar = 0.5 * gz * sigma * eps + 0.5 * gkl * (sigma^2 - 1)
      d/deps    = gz * sigma

  The noise is regenerated from the seed in the backward kernel instead of being
  saved, so the fused backward reads ``gz, mu, logvar`` and writes the two
  gradients: five passes over ``[R, D]`` memory in all.

Each op: kernel(s) + a ``torch.library.triton_op`` launcher (so ``torch.compile``
sees the kernels) + an ``autograd.Function`` with ``setup_context`` and ``vmap``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from torch.library import register_vmap, triton_op, wrap_triton

from ._common import (
    NAMESPACE,
    batch_args,
    contiguous,
    flat_block,
    load_acc,
    noise_at,
    philox_randn,
    placeholder,
    row_blocks,
    row_sum,
    rows_of,
    sample_period,
    store_out,
    zeros_acc,
)

__all__ = ["normal_kl_std", "normal_noise", "normal_rsample", "normal_rsample_kl"]


# =========================================================================== noise
@triton.jit(do_not_specialize=["seed"])
def _noise_kernel(
    out_ptr,  # [N] out: standard normals
    N,
    seed,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    eps = philox_randn(seed, offs)
    store_out(out_ptr, offs, eps, offs < N)


@triton_op(f"{NAMESPACE}::noise", mutates_args=())
def _noise(shape: list[int], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(shape, device=device, dtype=dtype)
    n = out.numel()
    if n:
        block = flat_block(n)
        wrap_triton(_noise_kernel)[(triton.cdiv(n, block),)](out, n, seed, BLOCK=block)
    return out


def normal_noise(shape, seed: int, device, dtype) -> torch.Tensor:
    """A new ``[*shape]`` tensor whose element ``i`` (row-major) is ``tl.randn(seed, i)``.

    Args:
        shape: output shape.
        seed: Philox key, an int in ``[0, 2**63)``.
        device: a CUDA device (compiled) or "cpu" (interpreter).
        dtype: output dtype; the float32 normals are rounded to it.
    """
    return _noise(list(shape), seed, torch.device(device), dtype)


# =========================================================================== rsample
@triton.jit(do_not_specialize=["seed", "period"])
def _rsample_fwd_kernel(
    mu_ptr,  # [N] mean
    lv_ptr,  # [N] log variance
    eps_ptr,  # [N] noise (read only if HAS_EPS)
    z_ptr,  # [N] out: sample
    N,
    seed,
    period,
    HAS_EPS: tl.constexpr,
    PERIODIC: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    mu = load_acc(mu_ptr, offs, mask, F64)
    lv = load_acc(lv_ptr, offs, mask, F64)
    if HAS_EPS:
        eps = load_acc(eps_ptr, offs, mask, F64)
    else:
        eps = noise_at(seed, offs, period, PERIODIC).to(mu.dtype)
    z = mu + tl.exp(0.5 * lv) * eps
    store_out(z_ptr, offs, z, mask)


@triton.jit(do_not_specialize=["seed", "period"])
def _rsample_bwd_kernel(
    gz_ptr,  # [N] upstream gradient of z
    lv_ptr,  # [N] log variance
    eps_ptr,  # [N] noise (read only if HAS_EPS)
    glv_ptr,  # [N] out: gradient of logvar (written if NEED_LV)
    geps_ptr,  # [N] out: gradient of eps (written if NEED_EPS)
    N,
    seed,
    period,
    HAS_EPS: tl.constexpr,
    PERIODIC: tl.constexpr,
    NEED_LV: tl.constexpr,
    NEED_EPS: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gz = load_acc(gz_ptr, offs, mask, F64)
    lv = load_acc(lv_ptr, offs, mask, F64)
    gzs = gz * tl.exp(0.5 * lv)
    if NEED_LV:
        if HAS_EPS:
            eps = load_acc(eps_ptr, offs, mask, F64)
        else:
            eps = noise_at(seed, offs, period, PERIODIC).to(gz.dtype)
        store_out(glv_ptr, offs, 0.5 * gzs * eps, mask)
    if NEED_EPS:
        store_out(geps_ptr, offs, gzs, mask)


@triton_op(f"{NAMESPACE}::rsample_fwd", mutates_args=())
def _rsample_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int, period: int
) -> torch.Tensor:
    mu, logvar, eps = contiguous(mu, logvar, eps)
    z = torch.empty_like(mu)
    n = z.numel()
    if n:
        block = flat_block(n)
        wrap_triton(_rsample_fwd_kernel)[(triton.cdiv(n, block),)](
            mu,
            logvar,
            eps if eps is not None else mu,  # dummy, never read
            z,
            n,
            seed,
            period,
            HAS_EPS=eps is not None,
            PERIODIC=period > 0,
            F64=mu.dtype == torch.float64,
            BLOCK=block,
        )
    return z


@triton_op(f"{NAMESPACE}::rsample_bwd", mutates_args=())
def _rsample_bwd(
    gz: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None,
    seed: int,
    period: int,
    need_logvar: bool,
    need_eps: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    gz, logvar, eps = contiguous(gz, logvar, eps)
    glv = torch.empty_like(logvar) if need_logvar else placeholder(logvar)
    geps = torch.empty_like(logvar) if need_eps else placeholder(logvar)
    n = gz.numel()
    if n and (need_logvar or need_eps):
        block = flat_block(n)
        wrap_triton(_rsample_bwd_kernel)[(triton.cdiv(n, block),)](
            gz,
            logvar,
            eps if eps is not None else gz,  # dummy, never read
            glv,
            geps,
            n,
            seed,
            period,
            HAS_EPS=eps is not None,
            PERIODIC=period > 0,
            NEED_LV=need_logvar,
            NEED_EPS=need_eps,
            F64=logvar.dtype == torch.float64,
            BLOCK=block,
        )
    return glv, geps


class NormalRsample(torch.autograd.Function):
    """``z = mu + exp(logvar / 2) * eps``; inputs ``[..., D]`` of one shape, output the same."""

    @staticmethod
    def forward(mu, logvar, eps, seed: int, period: int):
        return _rsample_fwd(mu, logvar, eps, seed, period)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _mu, logvar, eps, seed, period = inputs
        ctx.save_for_backward(logvar, eps)
        ctx.seed, ctx.period = seed, period

    @staticmethod
    @once_differentiable  # the backward kernels have no derivatives
    def backward(ctx, gz):
        logvar, eps = ctx.saved_tensors
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        need_eps = need_eps and eps is not None
        glv = geps = None
        if need_lv or need_eps:
            glv, geps = _rsample_bwd(gz, logvar, eps, ctx.seed, ctx.period, need_lv, need_eps)
        return (gz if need_mu else None, glv if need_lv else None, geps if need_eps else None, None, None)

    @staticmethod
    def vmap(info, in_dims, mu, logvar, eps, seed, period):
        mu, logvar, eps = batch_args(info, in_dims[:3], (mu, logvar, eps))
        return NormalRsample.apply(mu, logvar, eps, seed, sample_period(period, mu)), 0


def normal_rsample(mu, logvar, eps, seed):
    """Reparameterized sample ``[..., D]`` (noise from ``seed`` when ``eps`` is None)."""
    return NormalRsample.apply(mu, logvar, eps, 0 if seed is None else seed, 0)


# =========================================================================== KL to N(0, I)
@triton.jit
def _kl_fwd_kernel(
    mu_ptr,  # [R, D] mean
    lv_ptr,  # [R, D] log variance
    kl_ptr,  # [R] out: KL per row
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
        mu = load_acc(mu_ptr, offs, mask, F64)
        lv = load_acc(lv_ptr, offs, mask, F64)
        term = tl.exp(lv) + mu * mu - 1.0 - lv
        acc += row_sum(tl.where(mask, term, 0.0))
    store_out(kl_ptr, rows, 0.5 * acc, rmask)


@triton.jit
def _kl_bwd_kernel(
    gkl_ptr,  # [R] upstream gradient of the KL
    mu_ptr,  # [R, D] mean
    lv_ptr,  # [R, D] log variance
    gmu_ptr,  # [R, D] out: gkl * mu (written if NEED_MU)
    glv_ptr,  # [R, D] out: 0.5 * gkl * (exp(logvar) - 1) (written if NEED_LV)
    R,
    D,
    NEED_MU: tl.constexpr,
    NEED_LV: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64) * D
    g = load_acc(gkl_ptr, rows, rmask, F64)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base[:, None] + cols[None, :]
        if NEED_MU:
            mu = load_acc(mu_ptr, offs, mask, F64)
            store_out(gmu_ptr, offs, g * mu, mask)
        if NEED_LV:
            lv = load_acc(lv_ptr, offs, mask, F64)
            store_out(glv_ptr, offs, 0.5 * g * (tl.exp(lv) - 1.0), mask)


@triton_op(f"{NAMESPACE}::kl_std_fwd", mutates_args=())
def _kl_std_fwd(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mu, logvar = contiguous(mu, logvar)
    r, d = rows_of(mu)
    if d == 0:
        return mu.new_zeros(mu.shape[:-1])
    kl = mu.new_empty(mu.shape[:-1])
    if r:
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_kl_fwd_kernel)[(triton.cdiv(r, block_r),)](
            mu,
            logvar,
            kl,
            r,
            d,
            F64=mu.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return kl


@triton_op(f"{NAMESPACE}::kl_std_bwd", mutates_args=())
def _kl_std_bwd(
    gkl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, need_mu: bool, need_logvar: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    gkl, mu, logvar = contiguous(gkl, mu, logvar)
    gmu = torch.empty_like(mu) if need_mu else placeholder(mu)
    glv = torch.empty_like(logvar) if need_logvar else placeholder(logvar)
    r, d = rows_of(mu)
    if r and d and (need_mu or need_logvar):
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_kl_bwd_kernel)[(triton.cdiv(r, block_r),)](
            gkl,
            mu,
            logvar,
            gmu,
            glv,
            r,
            d,
            NEED_MU=need_mu,
            NEED_LV=need_logvar,
            F64=mu.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return gmu, glv


class NormalKLStd(torch.autograd.Function):
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per row: ``[..., D] -> [...]``."""

    @staticmethod
    def forward(mu, logvar):
        return _kl_std_fwd(mu, logvar)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable  # the backward kernels have no derivatives
    def backward(ctx, gkl):
        mu, logvar = ctx.saved_tensors
        need_mu, need_lv = ctx.needs_input_grad[:2]
        gmu, glv = _kl_std_bwd(gkl, mu, logvar, need_mu, need_lv)
        return (gmu if need_mu else None, glv if need_lv else None)

    @staticmethod
    def vmap(info, in_dims, mu, logvar):
        mu, logvar = batch_args(info, in_dims, (mu, logvar))
        return NormalKLStd.apply(mu, logvar), 0


def normal_kl_std(mu, logvar):
    """KL of a diagonal Gaussian to the standard normal, summed over the last dim."""
    return NormalKLStd.apply(mu, logvar)


# =========================================================================== fused rsample + KL
@triton.jit(do_not_specialize=["seed", "period"])
def _rsample_kl_fwd_kernel(
    mu_ptr,  # [R, D] mean
    lv_ptr,  # [R, D] log variance
    eps_ptr,  # [R, D] noise (read only if HAS_EPS)
    z_ptr,  # [R, D] out: sample
    kl_ptr,  # [R] out: KL per row
    R,
    D,
    seed,
    period,
    HAS_EPS: tl.constexpr,
    PERIODIC: tl.constexpr,
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
        mu = load_acc(mu_ptr, offs, mask, F64)
        lv = load_acc(lv_ptr, offs, mask, F64)
        if HAS_EPS:
            eps = load_acc(eps_ptr, offs, mask, F64)
        else:
            eps = noise_at(seed, offs, period, PERIODIC).to(mu.dtype)
        std = tl.exp(0.5 * lv)
        store_out(z_ptr, offs, mu + std * eps, mask)
        term = std * std + mu * mu - 1.0 - lv
        acc += row_sum(tl.where(mask, term, 0.0))
    store_out(kl_ptr, rows, 0.5 * acc, rmask)


@triton.jit(do_not_specialize=["seed", "period"])
def _rsample_kl_bwd_kernel(
    gz_ptr,  # [R, D] upstream gradient of z
    gkl_ptr,  # [R] upstream gradient of the KL
    mu_ptr,  # [R, D] mean
    lv_ptr,  # [R, D] log variance
    eps_ptr,  # [R, D] noise (read only if HAS_EPS)
    gmu_ptr,  # [R, D] out (written if NEED_MU)
    glv_ptr,  # [R, D] out (written if NEED_LV)
    geps_ptr,  # [R, D] out (written if NEED_EPS)
    R,
    D,
    seed,
    period,
    HAS_EPS: tl.constexpr,
    PERIODIC: tl.constexpr,
    NEED_MU: tl.constexpr,
    NEED_LV: tl.constexpr,
    NEED_EPS: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64) * D
    gkl = load_acc(gkl_ptr, rows, rmask, F64)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base[:, None] + cols[None, :]
        gz = load_acc(gz_ptr, offs, mask, F64)
        if NEED_MU:
            mu = load_acc(mu_ptr, offs, mask, F64)
            store_out(gmu_ptr, offs, gz + gkl * mu, mask)
        if NEED_LV or NEED_EPS:
            lv = load_acc(lv_ptr, offs, mask, F64)
            std = tl.exp(0.5 * lv)
            if NEED_LV:
                if HAS_EPS:
                    eps = load_acc(eps_ptr, offs, mask, F64)
                else:
                    eps = noise_at(seed, offs, period, PERIODIC).to(gz.dtype)
                glv = 0.5 * (gz * std * eps + gkl * (std * std - 1.0))
                store_out(glv_ptr, offs, glv, mask)
            if NEED_EPS:
                store_out(geps_ptr, offs, gz * std, mask)


@triton_op(f"{NAMESPACE}::rsample_kl_fwd", mutates_args=())
def _rsample_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int, period: int
) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar, eps = contiguous(mu, logvar, eps)
    r, d = rows_of(mu)
    z = torch.empty_like(mu)
    if d == 0:
        return z, mu.new_zeros(mu.shape[:-1])
    kl = mu.new_empty(mu.shape[:-1])
    if r:
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_rsample_kl_fwd_kernel)[(triton.cdiv(r, block_r),)](
            mu,
            logvar,
            eps if eps is not None else mu,  # dummy, never read
            z,
            kl,
            r,
            d,
            seed,
            period,
            HAS_EPS=eps is not None,
            PERIODIC=period > 0,
            F64=mu.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return z, kl


@triton_op(f"{NAMESPACE}::rsample_kl_bwd", mutates_args=())
def _rsample_kl_bwd(
    gz: torch.Tensor,
    gkl: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None,
    seed: int,
    period: int,
    need_mu: bool,
    need_logvar: bool,
    need_eps: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gz, gkl, mu, logvar, eps = contiguous(gz, gkl, mu, logvar, eps)
    gmu = torch.empty_like(mu) if need_mu else placeholder(mu)
    glv = torch.empty_like(mu) if need_logvar else placeholder(mu)
    geps = torch.empty_like(mu) if need_eps else placeholder(mu)
    r, d = rows_of(mu)
    if r and d and (need_mu or need_logvar or need_eps):
        block_r, block_d, warps = row_blocks(r, d)
        wrap_triton(_rsample_kl_bwd_kernel)[(triton.cdiv(r, block_r),)](
            gz,
            gkl,
            mu,
            logvar,
            eps if eps is not None else gz,  # dummy, never read
            gmu,
            glv,
            geps,
            r,
            d,
            seed,
            period,
            HAS_EPS=eps is not None,
            PERIODIC=period > 0,
            NEED_MU=need_mu,
            NEED_LV=need_logvar,
            NEED_EPS=need_eps,
            F64=mu.dtype == torch.float64,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return gmu, glv, geps


class NormalRsampleKL(torch.autograd.Function):
    """Fused ``(z, KL)``: ``[..., D] -> ([..., D], [...])``; one forward and one backward kernel."""

    @staticmethod
    def forward(mu, logvar, eps, seed: int, period: int):
        return _rsample_kl_fwd(mu, logvar, eps, seed, period)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, logvar, eps, seed, period = inputs
        ctx.save_for_backward(mu, logvar, eps)
        ctx.seed, ctx.period = seed, period

    @staticmethod
    @once_differentiable  # the backward kernels have no derivatives
    def backward(ctx, gz, gkl):
        mu, logvar, eps = ctx.saved_tensors
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        need_eps = need_eps and eps is not None
        gmu, glv, geps = _rsample_kl_bwd(gz, gkl, mu, logvar, eps, ctx.seed, ctx.period, need_mu, need_lv, need_eps)
        return (gmu if need_mu else None, glv if need_lv else None, geps if need_eps else None, None, None)

    @staticmethod
    def vmap(info, in_dims, mu, logvar, eps, seed, period):
        mu, logvar, eps = batch_args(info, in_dims[:3], (mu, logvar, eps))
        return NormalRsampleKL.apply(mu, logvar, eps, seed, sample_period(period, mu)), (0, 0)


def normal_rsample_kl(mu, logvar, eps, seed):
    """Fused reparameterized sample and KL: ``(z [..., D], kl [...])``."""
    return NormalRsampleKL.apply(mu, logvar, eps, 0 if seed is None else seed, 0)


# =========================================================================== vmap rules of the ops
# The autograd.Functions above carry their own vmap rule; these let the *backward*
# ops run under vmap too (torch.func.vmap(torch.func.grad(f)) calls them batched).
def _outs_dims(*needed: bool) -> tuple[int | None, ...]:
    return tuple(0 if n else None for n in needed)


@register_vmap(_rsample_bwd)
def _rsample_bwd_vmap(info, in_dims, gz, logvar, eps, seed, period, need_logvar, need_eps):
    gz, logvar, eps = batch_args(info, in_dims[:3], (gz, logvar, eps))
    outs = _rsample_bwd(gz, logvar, eps, seed, sample_period(period, gz), need_logvar, need_eps)
    return outs, _outs_dims(need_logvar, need_eps)


@register_vmap(_kl_std_bwd)
def _kl_std_bwd_vmap(info, in_dims, gkl, mu, logvar, need_mu, need_logvar):
    gkl, mu, logvar = batch_args(info, in_dims[:3], (gkl, mu, logvar))
    return _kl_std_bwd(gkl, mu, logvar, need_mu, need_logvar), _outs_dims(need_mu, need_logvar)


@register_vmap(_rsample_kl_bwd)
def _rsample_kl_bwd_vmap(info, in_dims, gz, gkl, mu, logvar, eps, seed, period, need_mu, need_logvar, need_eps):
    gz, gkl, mu, logvar, eps = batch_args(info, in_dims[:5], (gz, gkl, mu, logvar, eps))
    outs = _rsample_kl_bwd(gz, gkl, mu, logvar, eps, seed, sample_period(period, mu), need_mu, need_logvar, need_eps)
    return outs, _outs_dims(need_mu, need_logvar, need_eps)
