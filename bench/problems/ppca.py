"""The linear-Gaussian model (probabilistic PCA) and its closed forms.

Model (Tipping & Bishop 1999, "Probabilistic principal component analysis", sec. 3):

    p(z) = N(0, I_k),   p(x|z) = N(W z + b, s2 I_d),   W [d, k], b [d], s2 > 0.

* Marginal: ``p(x) = N(b, C)``, ``C = W W^T + s2 I_d``.
* Exact posterior: ``p(z|x) = N(M^-1 W^T (x - b), s2 M^-1)``, ``M = W^T W + s2 I_k``.
* For ``q = N(m, S)`` with ``S = diag(s)`` and ``r = x - b - W m`` the ELBO is

      L = -d/2 log(2 pi s2) - (|r|^2 + tr(W^T W S)) / (2 s2) - (m^T m + tr S) / 2
          + log|S| / 2 + k / 2  =  log p(x) - KL(q || p(z|x)),

  and its gradients are (differentiating the line above)

      dL/dm = W^T r / s2 - m,
      dL/dlogvar_j = s_j dL/ds_j = -s_j (W^T W)_jj / (2 s2) - s_j / 2 + 1/2,
      dL/dW = (r m^T - W S) / s2,      dL/db = r / s2,
      dL/dlog s2 = -d/2 + (|r|^2 + tr(W^T W S)) / (2 s2).

  With the linear encoder ``m = A x + c`` the chain rule gives ``dL/dA = (dL/dm) x^T``
  and ``dL/dc = dL/dm``. A diagonal q equals the exact posterior only when
  ``W^T W`` is diagonal; then L = log p(x).

:class:`LinearGaussianVAE` follows the estimators' model protocol (its densities
are evaluated by the estimators through the kernel API), so every gradient
estimator can be checked against the exact values here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "LinearGaussianVAE",
    "PPCAParams",
    "dataset_arrays",
    "elbo",
    "elbo_grads",
    "exact_posterior",
    "log_marginal",
    "model_for",
    "random_params",
    "sample",
]


@dataclass(frozen=True)
class PPCAParams:
    """Parameters of the generative model.

    Attributes:
        W: ``[d, k]`` loading matrix.
        b: ``[d]`` offset.
        s2: observation noise variance (float).
    """

    W: torch.Tensor
    b: torch.Tensor
    s2: float

    @property
    def d(self) -> int:
        return int(self.W.shape[0])

    @property
    def k(self) -> int:
        return int(self.W.shape[1])


def _check_dims(d: object, k: object) -> None:
    for arg, v in (("d", d), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    if k > d:
        raise ValueError(f"k must be at most d (latent size <= data size), got k={k}, d={d}")


def random_params(
    d: int, k: int, *, seed: int = 0, s2: float = 0.5, orthogonal: bool = False, dtype=torch.float64
) -> PPCAParams:
    """Random model parameters from ``seed``.

    Args:
        d: data dimension.
        k: latent dimension (<= d).
        seed: generator seed.
        s2: noise variance.
        orthogonal: give W orthogonal columns with norms ``linspace(2, 1, k)``, so that
            ``W^T W`` is diagonal and a diagonal q can equal the exact posterior.
        dtype: float dtype of W and b.
    """
    _check_dims(d, k)
    if not s2 > 0:
        raise ValueError(f"s2 must be positive, got {s2!r}")
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    if orthogonal:
        q, _ = torch.linalg.qr(w)
        w = q * torch.linspace(2.0, 1.0, k, dtype=torch.float64)
    b = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    return PPCAParams(w.to(dtype), b.to(dtype), float(s2))


def sample(params: PPCAParams, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` draws ``x = W z + b + sqrt(s2) e`` ``[n, d]`` with z, e standard normal (from ``seed``)."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, params.k, generator=g, dtype=torch.float64)
    e = torch.randn(n, params.d, generator=g, dtype=torch.float64)
    x = z @ params.W.double().T + params.b.double() + math.sqrt(params.s2) * e
    return x.to(params.W.dtype)


def log_marginal(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, s2) -> torch.Tensor:
    """Exact ``log p(x) = log N(x; b, W W^T + s2 I)`` ``[n]`` for x ``[n, d]``."""
    d = W.shape[0]
    c = W @ W.T + torch.as_tensor(s2, dtype=W.dtype) * torch.eye(d, dtype=W.dtype)
    chol = torch.linalg.cholesky(c)
    r = (x - b).T  # [d, n]
    sol = torch.linalg.solve_triangular(chol, r, upper=False)
    logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (d * LOG_2PI + logdet + (sol * sol).sum(0))


def exact_posterior(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, s2) -> tuple[torch.Tensor, torch.Tensor]:
    """``p(z|x) = N(M^-1 W^T (x - b), s2 M^-1)``: ``(mean [n, k], cov [k, k])``."""
    k = W.shape[1]
    m_mat = W.T @ W + torch.as_tensor(s2, dtype=W.dtype) * torch.eye(k, dtype=W.dtype)
    mean = torch.linalg.solve(m_mat, W.T @ (x - b).T).T
    return mean, torch.as_tensor(s2, dtype=W.dtype) * torch.linalg.inv(m_mat)


def elbo(x, m, logvar, W, b, log_s2) -> torch.Tensor:
    """Closed-form ELBO ``[n]`` for ``q = N(m, diag exp(logvar))`` (differentiable in every input).

    Args:
        x: ``[n, d]``; m: ``[n, k]``; logvar: ``[n, k]`` or ``[k]``; W: ``[d, k]``; b: ``[d]``;
        log_s2: scalar tensor, log of the noise variance.
    """
    d, k = W.shape
    s = torch.exp(logvar).expand_as(m)
    s2 = torch.exp(log_s2)
    r = x - b - m @ W.T
    wtw = (W * W).sum(0)  # diag of W^T W: tr(W^T W S) = sum_j (W^T W)_jj s_j
    return (
        -0.5 * d * (LOG_2PI + log_s2)
        - ((r * r).sum(-1) + (wtw * s).sum(-1)) / (2.0 * s2)
        - 0.5 * ((m * m).sum(-1) + s.sum(-1))
        + 0.5 * torch.log(s).sum(-1)
        + 0.5 * k
    )


def elbo_grads(x, m, logvar, W, b, log_s2) -> dict[str, torch.Tensor]:
    """Exact gradients of the ELBO (module docstring formulas).

    Returns:
        ``{"m": [n, k], "logvar": [n, k]}`` per example and ``{"W": [d, k], "b": [d],
        "log_s2": []}`` summed over the n examples.
    """
    d = W.shape[0]
    s = torch.exp(logvar).expand_as(m)
    s2 = torch.exp(log_s2)
    r = x - b - m @ W.T  # [n, d]
    wtw = (W * W).sum(0)  # [k]
    return {
        "m": r @ W / s2 - m,
        "logvar": -s * wtw / (2.0 * s2) - 0.5 * s + 0.5,
        "W": (r.T @ m - W * s.sum(0)) / s2,
        "b": r.sum(0) / s2,
        "log_s2": (-0.5 * d + ((r * r).sum(-1) + (wtw * s).sum(-1)) / (2.0 * s2)).sum(),
    }


# --------------------------------------------------------------------------- the model
class _LinearEncoder(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, d))  # A [k, d]
        self.bias = nn.Parameter(torch.zeros(k))  # c [k]
        self.logvar = nn.Parameter(torch.zeros(k))  # log diag S [k], shared by all x


class _LinearDecoder(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d, k))  # W [d, k]
        self.bias = nn.Parameter(torch.zeros(d))  # b [d]
        self.log_s2 = nn.Parameter(torch.zeros(()))  # log s2


def _affine(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``z @ weight.T + bias`` over the last dim: one ``addmm`` with ``weight.T`` made contiguous.

    ``F.linear`` hands the GEMM the transposed view of ``weight``, which is slower
    at the variance benchmark's shapes (millions of rows of k = 3 latents to
    d = 10) than copying the small transpose first, and ``z @ weight.T + bias``
    takes a second pass for the bias (docs/per-sample-gradients.md).
    """
    lead = z.shape[:-1]
    out = torch.addmm(bias, z.reshape(-1, z.shape[-1]), weight.T.contiguous())
    return out.view(*lead, out.shape[-1])


class LinearGaussianVAE(nn.Module):
    """Probabilistic-PCA decoder with a linear Gaussian encoder (model protocol of :mod:`estimators.base`).

    ``q(z|x) = N(A x + c, diag exp(logvar))``, ``p(x|z) = N(W z + b, s2 I)``, ``p(z) = N(0, I)``.
    Parameters: ``encoder.weight`` (A ``[k, d]``), ``encoder.bias`` (c ``[k]``),
    ``encoder.logvar`` (``[k]``), ``decoder.weight`` (W ``[d, k]``), ``decoder.bias``
    (b ``[d]``), ``decoder.log_s2`` (scalar). Initialised with small random A, W from
    torch's generator, zero c, b, logvar and log s2.

    Args:
        d: data dimension.
        k: latent dimension.
        dtype: parameter dtype.
    """

    likelihood = "gaussian"

    def __init__(self, d: int, k: int, *, dtype=torch.float32) -> None:
        super().__init__()
        _check_dims(d, k)
        self.d, self.k = d, k
        self.encoder = _LinearEncoder(d, k)
        self.decoder = _LinearDecoder(d, k)
        with torch.no_grad():
            self.encoder.weight.normal_(0.0, 0.1)
            self.decoder.weight.normal_(0.0, 1.0 / math.sqrt(k))
        self.to(dtype)

    @classmethod
    def from_params(cls, params: PPCAParams, *, dtype=None) -> LinearGaussianVAE:
        """A model whose decoder is ``params`` (the encoder keeps its initialisation)."""
        dtype = dtype or params.W.dtype
        model = cls(params.d, params.k, dtype=dtype)
        with torch.no_grad():
            model.decoder.weight.copy_(params.W)
            model.decoder.bias.copy_(params.b)
            model.decoder.log_s2.fill_(math.log(params.s2))
        return model

    # protocol
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, d] -> (mu = x A^T + c [B, k], logvar [B, k])``."""
        mu = _affine(x, self.encoder.weight, self.encoder.bias)
        return mu, self.encoder.logvar.expand(mu.shape)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [..., k] -> (mean = z W^T + b [..., d], logvar = log s2 [..., d])``."""
        mean = _affine(z, self.decoder.weight, self.decoder.bias)  # S x R x B rows of k = 3 latents
        return mean, self.decoder.log_s2.expand(mean.shape)

    def decoder_vjp(
        self, z: torch.Tensor, cotangents: tuple[torch.Tensor, torch.Tensor], rep_dim: int
    ) -> dict[str, torch.Tensor]:
        """Per-replicate vector-Jacobian products of :meth:`decode` in the decoder's parameters, in closed form.

        The optional hook of the model protocol that
        :func:`estimators.per_sample_grads` calls instead of ``torch.func.vmap``
        over a ``vjp`` of ``decode``, which recomputes the decoder's forward for the
        parameters' graph (the measured difference is in docs/per-sample-gradients.md).
        With ``mean = z W^T + b`` and ``logvar = log s2`` everywhere, the products for
        replicate ``r`` (the slice ``r`` of ``rep_dim``) are sums over its rows:
        ``dW_r = sum c_mean^T z``, ``db_r = sum c_mean``, ``dlog_s2_r = sum c_logvar``.

        Args:
            z: ``[..., R, ..., k]`` latents, the R replicates along ``rep_dim``.
            cotangents: ``(c_mean, c_logvar)``, ``[..., d]`` each, broadcastable to ``decode(z)``'s outputs.
            rep_dim: the replicate dim of ``z`` (a leading dim).

        Returns:
            ``{"decoder.weight": [R, d, k], "decoder.bias": [R, d], "decoder.log_s2": [R]}``.
        """
        c_mean, c_lv = cotangents
        lead = z.shape[:-1]
        R = lead[rep_dim]
        P, Q = math.prod(lead[:rep_dim]), math.prod(lead[rep_dim + 1 :])
        # [z, 1] in blocks of Q rows, one block per (outer index, replicate): one batched
        # product gives dW and (from the column of ones) db, summed over the outer index
        # after (faster than a bmm plus a separate strided sum for db).
        z1 = torch.cat([z, z.new_ones(()).expand(*lead, 1)], -1).reshape(P * R, Q, self.k + 1)
        cq = c_mean.expand(*lead, self.d).reshape(P * R, Q, self.d)
        w = torch.bmm(z1.transpose(1, 2), cq).view(P, R, self.k + 1, self.d).sum(0)  # [R, k + 1, d]
        dls2 = c_lv.expand(*lead, self.d).reshape(P, R, -1).sum(-1).sum(0)
        return {"decoder.weight": w[:, : self.k].transpose(1, 2), "decoder.bias": w[:, self.k], "decoder.log_s2": dls2}

    # closed forms
    def _theta(self):
        dec = self.decoder
        return dec.weight, dec.bias, dec.log_s2

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` ``[B]`` under the decoder."""
        w, b, log_s2 = self._theta()
        return log_marginal(x, w, b, torch.exp(log_s2))

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Closed-form ELBO ``[B]`` of the current encoder and decoder."""
        mu, logvar = self.encode(x)
        return elbo(x, mu, logvar, *self._theta())

    def exact_loss_grads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact gradients of ``loss = -mean_b ELBO_b`` keyed by parameter name (detached)."""
        with torch.no_grad():
            mu, logvar = self.encode(x)
            g = elbo_grads(x, mu, logvar, *self._theta())
            n = x.shape[0]
            out = {
                "encoder.weight": g["m"].T @ x,
                "encoder.bias": g["m"].sum(0),
                "encoder.logvar": g["logvar"].sum(0),
                "decoder.weight": g["W"],
                "decoder.bias": g["b"],
                "decoder.log_s2": g["log_s2"],
            }
            return {k: -v / n for k, v in out.items()}

    def set_exact_posterior(self, *, atol: float = 1e-6) -> None:
        """Set the encoder to the exact posterior ``q = p(z|x)`` of the current decoder.

        Raises:
            ValueError: ``W^T W`` is not diagonal (then no diagonal q is exact).
        """
        with torch.no_grad():
            w, b, log_s2 = self._theta()
            wtw = w.T @ w
            off = (wtw - torch.diag(torch.diagonal(wtw))).abs().max().item()
            if off > atol * max(1.0, wtw.abs().max().item()):
                raise ValueError(
                    f"W^T W must be diagonal for a diagonal q to be the exact posterior, off-diagonal up to {off:.3g}"
                )
            s2 = torch.exp(log_s2)
            m_diag = torch.diagonal(wtw) + s2
            a = w.T / m_diag[:, None]  # M^-1 W^T, M diagonal
            self.encoder.weight.copy_(a)
            self.encoder.bias.copy_(-(a @ b))
            self.encoder.logvar.copy_(torch.log(s2 / m_diag))


# --------------------------------------------------------------------------- harness hooks
DEFAULT_D, DEFAULT_K, DEFAULT_N, DEFAULT_S2 = 10, 3, 2000, 0.5


def dataset_arrays(
    seed: int = 0, *, n: int = DEFAULT_N, d: int = DEFAULT_D, k: int = DEFAULT_K, s2: float = DEFAULT_S2
) -> tuple[np.ndarray, dict]:
    """Synthetic data for the ``ppca`` dataset: ``(x [n, d] float32, info)``.

    ``info`` holds the true ``W`` ``[d, k]``, ``b`` ``[d]`` (float64 numpy), ``s2``, ``k``,
    ``"likelihood": "gaussian"`` and ``"image_shape": (d,)``. Parameters from
    ``seed``, data from ``seed + 1``.
    """
    params = random_params(d, k, seed=seed, s2=s2)
    x = sample(params, n, seed=int(seed) + 1)
    info = {
        "W": params.W.numpy(),
        "b": params.b.numpy(),
        "s2": params.s2,
        "k": k,
        "likelihood": "gaussian",
        "image_shape": (d,),
    }
    return x.numpy().astype(np.float32), info


def model_for(dataset) -> LinearGaussianVAE:
    """A :class:`LinearGaussianVAE` for a ``ppca`` :class:`bench.problems.datasets.Dataset`.

    The latent size is the dataset's true ``k`` (``info["k"]``, else ``W.shape[1]``,
    else :data:`DEFAULT_K`); the parameters start from torch's generator (seed it first).
    """
    info = getattr(dataset, "info", {}) or {}
    k = int(info.get("k", np.shape(info["W"])[1] if "W" in info else DEFAULT_K))
    return LinearGaussianVAE(int(dataset.dim), k)
