"""Statistics of R gradient estimates: variance, SNR, bias and cosine, each with its uncertainty.

``g [R, P]`` holds R independent estimates of a P-dim gradient; ``truth [P]`` the
ground truth, exact (closed forms) or itself an average of Monte Carlo estimates
whose own noise is given by ``truth_groups [G, P]``: G independent group means
whose average is ``truth``. All sums run in float64.

**Variance.** ``tr Var[g] ~= 1/(R-1) sum_r ||g_r - gbar||^2`` with a percentile
bootstrap interval over the R rows (each replicate rescaled by R/(R-1), the
bootstrap bias of a sample variance with ties), computed from the R x R Gram
matrix (Efron & Tibshirani 1993, ch. 13).

**Bias.** With ``d_r = g_r - g*``, ``delta = gbar - g*`` and ``b = E[g] - g*`` the bias,

    bias_sq = ||delta||^2 - tr S / R - tr S_ref / G = 1/(R(R-1)) sum_{r != q} d_r^T d_q - tr S_ref / G

is unbiased for ``||b||^2`` (S, S_ref the sample covariances of the rows and of the
reference groups). Its rows' part is a U-statistic of degree 2 whose variance at
``b = 0`` is ``2 E[(d_r^T d_q)^2] / (R (R-1))`` whatever the estimates' distribution
(Hoeffding 1948, "A class of statistics with asymptotically normal distribution",
Ann. Math. Statist. 19), estimated by the mean of the squared off-diagonal Gram
entries; the Gaussian formula ``2 tr(Var^2) / R^2`` with the usual estimate of
``tr(Var^2)`` fails for score-function estimates, which scale every coordinate by
one f(z). Away from ``b = 0`` the U-statistic's variance is
``(4 (R-2) zeta1 + 2 zeta2) / (R (R-1))`` with ``zeta1 = Var(d_r^T b)`` estimated from
distinct triples of rows (the Gram matrix's row sums), ``zeta2 = Var(d_r^T d_q)``. The
reference adds ``2 tr(C_ref^2)``, the variance of its subtracted trace and
``4 b^T C_ref b`` (C_ref = Var[g*], from the groups; the reference is a mean of many
estimates, so these Gaussian terms hold).
Then

* the 95% interval of ``bias_sq`` is ``bias_sq +- 1.96 se``; the interval of
  ``bias = ||b||`` is its square root, clipped at 0, so its low end is 0 when the
  data are consistent with no bias;
* the one-sided p-value of ``bias_sq = 0`` is ``1 - Phi(bias_sq / se0)``, ``se0`` the
  standard error at ``b = 0``;
* ``bias_mde``: the smallest relative bias ``||b|| / ||g*||`` that a one-sided 5% test
  detects with 80% power at this R, ``sqrt((1.645 + 0.842) se0) / ||g*||`` (the
  ``b^T C b`` term of the alternative is left out: a slight understatement).

**Cosine and SNR.** The noise of ``gbar`` biases both plain estimates: it lowers
``cos(gbar, g*)`` and raises ``|gbar_i|`` in the SNR, the mean over elements of
``|gbar_i| / sd_i`` (Rainforth et al. 2018). The cosine is reported bootstrap
bias-corrected, ``2 theta - mean(theta*)`` (Efron & Tibshirani 1993, sec. 10.6), with
the basic bootstrap interval ``[2 theta - q_97.5, 2 theta - q_2.5]`` (Davison & Hinkley
1997, eq. 5.6), R rows resampled (and the G reference groups with them) through
small Gram matrices; it is clipped to [-1, 1]. The SNR is reported jackknife
bias-corrected, ``R theta - (R-1) mean(theta_(-r))``, with the interval
``+- 1.96`` jackknife standard errors (Efron & Tibshirani 1993, ch. 11). Without
bootstrap replicates (``bootstrap=0``) the plain estimates are reported, without
intervals.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Z95", "gradient_stats", "normal_sf", "replicates_for_bias"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
Z_ALPHA = 1.6448536269514722  # one-sided 5%
Z_POWER = 0.8416212335729143  # 80% power


def normal_sf(z: float) -> float:
    """``P(N(0, 1) > z)``."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _basic_interval(theta: float, boot: torch.Tensor) -> tuple[float, float]:
    """The basic bootstrap 95% interval ``[2 theta - q_97.5, 2 theta - q_2.5]``."""
    if not math.isfinite(theta):
        return math.nan, math.nan
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return 2.0 * theta - hi, 2.0 * theta - lo


def replicates_for_bias(tr_var_sq: float, truth_norm_sq: float, target_rel_bias: float) -> float:
    """R at which :func:`gradient_stats`' ``bias_mde`` reaches ``target_rel_bias`` (exact truth, large R).

    ``bias_mde^2 ||g*||^2 = (z_a + z_b) se0`` and ``se0 ~= sqrt(2 tr(Var^2)) / R``, so
    ``R = (z_a + z_b) sqrt(2 tr(Var^2)) / (target^2 ||g*||^2)``.
    """
    if not (truth_norm_sq > 0 and target_rel_bias > 0) or not math.isfinite(tr_var_sq):
        return math.nan
    return (Z_ALPHA + Z_POWER) * math.sqrt(2.0 * tr_var_sq) / (target_rel_bias**2 * truth_norm_sq)


def _pair_sq_mean(k: torch.Tensor) -> float:
    """Mean over ``r != q`` of ``k[r, q]^2`` (a Gram matrix's off-diagonal squares)."""
    r = k.shape[0]
    if r < 2:
        return math.nan
    return (float((k * k).sum()) - float((k.diagonal() ** 2).sum())) / (r * (r - 1))


def gradient_stats(
    g: torch.Tensor,
    truth: torch.Tensor | None = None,
    *,
    truth_groups: torch.Tensor | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Variance, SNR, bias and cosine of R estimates ``g [R, P]``, each with its interval (module doc).

    Args:
        g: ``[R, P]`` one flattened gradient estimate per row (R >= 2).
        truth: ``[P]`` ground-truth gradient, or None.
        truth_groups: ``[G, P]`` independent group means whose average is ``truth``
            (a Monte Carlo reference); None for an exact truth.
        bootstrap: bootstrap replicates of the intervals (0: none).
        seed: seed of the bootstrap resampling.

    Returns:
        ``total_variance`` (``ci_low``/``ci_high``), ``snr`` (``snr_ci_low``/``snr_ci_high``),
        ``grad_norm_sq``, ``tr_var_sq`` and, with ``truth``: ``bias_sq`` (``bias_sq_se``,
        ``bias_sq_ci_low``/``bias_sq_ci_high``), ``bias`` (``bias_ci_low``/``bias_ci_high``),
        ``bias_p_value``, ``bias_mde``, ``rel_bias``, ``cosine`` (``cosine_ci_low``/``cosine_ci_high``).
    """
    g = g.double()
    r, p = g.shape
    if r < 2:
        raise ValueError(f"need at least 2 estimates to measure a variance, got {r}")
    n = r - 1
    mean = g.mean(0)
    xc = g - mean
    gram_c = xc @ xc.T  # [R, R]
    total = float(gram_c.diagonal().sum()) / n
    var_el = (xc * xc).sum(0) / n
    sd = var_el.sqrt()
    nz = sd > 0
    snr = float((mean[nz].abs() / sd[nz]).mean()) if bool(nz.any()) else math.inf
    tr_var_sq = _pair_sq_mean(gram_c)  # ~ tr(Var^2), without assuming Gaussian estimates
    nan = math.nan
    out = {
        "total_variance": total,
        "snr": snr,
        "grad_norm_sq": float(mean @ mean),
        "tr_var_sq": tr_var_sq,
        "ci_low": nan,
        "ci_high": nan,
        "snr_ci_low": nan,
        "snr_ci_high": nan,
    }
    t = None
    if truth is not None:
        t = truth.double().reshape(-1)
        if t.numel() != p:
            raise ValueError(f"truth has {t.numel()} elements but the estimates have {p}")
    hc = None
    if t is not None and truth_groups is not None and truth_groups.shape[0] >= 2:
        h = truth_groups.double().reshape(truth_groups.shape[0], -1)
        if h.shape[1] != p:
            raise ValueError(f"truth_groups have {h.shape[1]} elements per row but the estimates have {p}")
        hc = h - h.mean(0)
    boot_w = None
    if bootstrap > 0 and p > 0:
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randint(0, r, (bootstrap, r), generator=gen)
        boot_w = torch.zeros(bootstrap, r, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(bootstrap, r, dtype=torch.float64)
        )
        gram = g @ g.T
        quad = ((boot_w @ gram) * boot_w).sum(1)
        # the sample variance of a resample with ties is biased by (R-1)/R under the bootstrap
        # distribution (E*[s*^2] = (R-1)/R s^2); rescale so the replicates centre on the estimate
        boot = (boot_w @ gram.diagonal() - quad / r) / n * (r / n)
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out["ci_low"], out["ci_high"] = lo, hi
    if bootstrap > 0 and p > 0 and r >= 3:
        # SNR: jackknife over rows (Quenouille 1956; Efron & Tibshirani 1993, ch. 11): the
        # leave-one-out means and sds are [R, P], where a bootstrap would need [B, P]
        s1, s2 = g.sum(0), (g * g).sum(0)
        m_j = (s1 - g) / n  # [R, P]
        v_j = ((s2 - g * g) - n * m_j * m_j) / (n - 1)
        sd_j = v_j.clamp_min(0).sqrt()
        keep = sd_j > 0
        snr_j = torch.where(keep, m_j.abs() / sd_j.clamp_min(1e-300), torch.zeros_like(sd_j)).sum(1) / keep.sum(
            1
        ).clamp_min(1)
        if math.isfinite(snr):
            jbar = float(snr_j.mean())
            se_j = math.sqrt(n / r * float(((snr_j - jbar) ** 2).sum()))
            snr_bc = max(r * snr - n * jbar, 0.0)  # bias-corrected
            out["snr"] = snr_bc
            out["snr_ci_low"], out["snr_ci_high"] = max(snr_bc - Z95 * se_j, 0.0), snr_bc + Z95 * se_j
    if t is None:
        return out
    delta = mean - t
    tn = float(t.norm())
    # bias_sq = ||delta||^2 - tr S / R - tr S_ref / G; its rows' part is the U-statistic
    # 1/(R(R-1)) sum_{r != q} d_r^T d_q of d = g - g*, whose variance at b = 0 is
    # 2 E[(d_r^T d_q)^2] / (R (R-1)) whatever the estimates' distribution (Hoeffding 1948)
    d = g - t
    k = d @ d.T
    pair_sq = _pair_sq_mean(k)
    if hc is not None:  # the reference's own noise: C_ref = Var[g*] from its G group means
        gg = hc.shape[0]
        ng = gg - 1
        gram_h = hc @ hc.T
        tr_ref = float(gram_h.diagonal().sum()) / ng / gg  # tr Var[g*] = tr S_ref / G
        tr_ref_sq = max(_pair_sq_mean(gram_h), 0.0) / gg**2 if gg >= 2 else tr_ref * tr_ref
        dcd_ref = float((hc @ delta).pow(2).sum()) / ng / gg
        ref_var0 = 2.0 * tr_ref_sq + 2.0 * tr_ref_sq / max(ng, 1)  # ||e_ref||^2 and its subtracted trace
        ref_var1 = 4.0 * max(dcd_ref - tr_ref_sq, 0.0)
    else:
        tr_ref = ref_var0 = ref_var1 = 0.0
    bias_sq = float(delta @ delta) - total / r - tr_ref
    u = bias_sq + tr_ref  # the rows' U-statistic
    # Hoeffding: Var U = (4 zeta1 + 2 zeta2) / (R ), zeta1 = Var(d_r^T b), zeta2 = Var(d_r^T d_q);
    # E[(d_r^T d_q)(d_r^T d_s)] over distinct r, q, s is zeta1 + ||b||^4 (sums of the Gram matrix)
    off = k - torch.diag(k.diagonal())
    a = off.sum(1)
    triples = float((a * a).sum() - (off * off).sum()) / (r * (r - 1) * (r - 2)) if r >= 3 else u * u
    zeta1 = max(triples - u * u, 0.0)
    zeta2 = max(pair_sq - u * u, 0.0) if math.isfinite(pair_sq) else total * total
    se0 = math.sqrt(max(2.0 * (pair_sq if math.isfinite(pair_sq) else total * total) / (r * n) + ref_var0, 0.0))
    se = math.sqrt(max((4.0 * (r - 2) * zeta1 + 2.0 * zeta2) / (r * n) + ref_var0 + ref_var1, se0 * se0))
    lo, hi = bias_sq - Z95 * se, bias_sq + Z95 * se
    out.update(
        bias_sq=bias_sq,
        bias_sq_se=se,
        bias_sq_ci_low=lo,
        bias_sq_ci_high=hi,
        bias=math.sqrt(max(bias_sq, 0.0)),
        bias_ci_low=math.sqrt(max(lo, 0.0)),
        bias_ci_high=math.sqrt(max(hi, 0.0)),
        bias_p_value=normal_sf(bias_sq / se0) if se0 > 0 else (0.0 if bias_sq > 0 else 1.0),
        bias_mde=math.sqrt((Z_ALPHA + Z_POWER) * se0) / tn if tn > 0 else nan,
        rel_bias=math.sqrt(max(bias_sq, 0.0)) / tn if tn > 0 else nan,
    )
    denom = float(mean.norm()) * tn
    out["cosine"] = float(mean @ t) / denom if denom > 0 else nan
    out["cosine_ci_low"] = out["cosine_ci_high"] = nan
    if boot_w is not None:  # through small Gram matrices: no [B, P] arrays
        w = boot_w / r
        gt = g @ t  # [R]
        num = w @ gt
        gn2 = ((w @ (g @ g.T)) * w).sum(1)
        tn2 = torch.full_like(num, float(t @ t))
        if hc is not None:
            gen = torch.Generator().manual_seed(int(seed) + 1)
            gg = hc.shape[0]
            idx = torch.randint(0, gg, (boot_w.shape[0], gg), generator=gen)
            v = (
                torch.zeros(boot_w.shape[0], gg, dtype=torch.float64).scatter_add_(
                    1, idx, torch.ones(boot_w.shape[0], gg, dtype=torch.float64)
                )
                / gg
            )
            num = num + ((w @ (g @ hc.T)) * v).sum(1)  # gbar* . (t + hc^T v)
            tn2 = tn2 + 2.0 * (v @ (hc @ t)) + ((v @ (hc @ hc.T)) * v).sum(1)
        cos = num / (gn2.clamp_min(0).sqrt() * tn2.clamp_min(0).sqrt()).clamp_min(1e-300)
        lo, hi = _basic_interval(out["cosine"], cos)
        out["cosine_ci_low"], out["cosine_ci_high"] = max(lo, -1.0), min(hi, 1.0)
        if math.isfinite(out["cosine"]):
            out["cosine"] = min(max(2.0 * out["cosine"] - float(cos.mean()), -1.0), 1.0)
    return out
