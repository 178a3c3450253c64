"""Gradient-variance benchmark: variance, SNR, cost-normalised variance, bias and cosine.

For a problem (a VAE on a dataset at several points of training, or a Gaussian toy)
and an estimator (x control variate) x backend x number of samples S, it draws R
independent gradient estimates ``g_1..g_R`` (each with S samples) in one batched
call (:func:`estimators.per_sample_grads`, or a replicated surrogate for the toys)
and reports, over all parameters and split into encoder and decoder:

* ``total_variance`` (and ``encoder_variance``/``decoder_variance``): the trace of the gradient covariance,
  ``tr Var[g] ~= 1/(R-1) sum_r ||g_r - gbar||^2``, with a percentile bootstrap CI
  over the R rows (``ci_low``/``ci_high``, 95 %; each replicate rescaled by R/(R-1),
  the bootstrap bias of a sample variance with ties; computed from the R x R Gram
  matrix, so each bootstrap replicate costs O(R^2));
* ``snr``: the mean over parameter elements of ``|gbar_i| / sd_i`` (the signal-to-noise
  ratio of Rainforth et al. 2018, "Tighter variational bounds are not necessarily
  better", averaged over elements with ``sd_i > 0``);
* cost-normalised variance (Mohamed et al. 2020, JMLR, sec. 8: compare estimators at
  equal cost): ``variance_x_seconds`` = variance x seconds per estimate, and
  ``variance_x_evals`` = variance x model evaluations per estimate (S, times the
  estimator's evaluations per sample);
* against a ground truth ``g*``: ``bias_sq = ||gbar - g*||^2 - tr Var[g] / R``, an
  unbiased estimate of the squared bias ``||E g - g*||^2`` (it can be slightly
  negative for an unbiased estimator), ``rel_bias = sqrt(max(bias_sq, 0)) / ||g*||``,
  ``bias = sqrt(max(bias_sq, 0))``, and ``cosine = <gbar, g*> / (||gbar|| ||g*||)``. The truth is exact for ``ppca``
  (closed-form ELBO gradient, :mod:`bench.problems.ppca`) and the Gaussian toys; for an MLP VAE
  it is a high-sample reference: the mean of many ``reparam`` estimates (``iwae`` at
  the same K for the multi-sample bounds, whose objective is the K-sample bound).

Gaussian toys (:mod:`bench.problems.toys`: ``est.surrogate`` of a Gaussian
expectation with an exact gradient) are batched by
:func:`estimators.per_sample_grads_expectation`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import estimators as estimators_mod
import kernels
from bench.measure.timing import time_call
from bench.problems import datasets as ds_mod
from bench.problems import models as models_mod
from bench.problems.toys import TOYS, toy_problem
from bench.results import Result, ResultsWriter, config_hash, make_result, to_frame
from bench.run.tasks import Task, needs_gpu, register_kind, run_tasks

__all__ = [
    "TOYS",
    "VarianceConfig",
    "gradient_stats",
    "toy_problem",
    "variance_benchmark",
]


@dataclass(frozen=True)
class VarianceConfig:
    """One variance measurement.

    Attributes:
        problem: a dataset name (a VAE on it) or a toy from :data:`TOYS`.
        estimator, control_variate, backend: what is measured.
        num_samples: S, samples per estimate (K for the multi-sample bounds).
        replicates: R, independent estimates.
        train_step: the point of training (steps of reparam + Adam from the seeded init).
        seed: seeds the model, the batch and the estimates.
        batch_size: examples in the fixed batch x (VAE problems).
        toy_dim: D of the toys.
        bootstrap: bootstrap replicates for the CIs.
        data_seed: seeds the dataset split.
        model: a registered model (:func:`bench.problems.models.register_model`) for
            the VAE problems.
        threads: torch and numba threads the configuration runs with (None: the
            process's); reduction order depends on them, so they are part of it.
        cv_warmup: estimates made (with state updates, without moving the model) before
            measuring a stateful control variate (``moving_average``, ``learned``), so
            its state is not the untrained initial one; the snapshots themselves are
            trained with ``reparam``.
    """

    problem: str = "digits"
    estimator: str = "reparam"
    control_variate: str = "none"
    backend: str = "torch"
    num_samples: int = 1
    replicates: int = 64
    train_step: int = 0
    seed: int = 0
    batch_size: int = 32
    toy_dim: int = 16
    bootstrap: int = 200
    data_seed: int = 0
    cv_warmup: int = 200
    model: str = "default"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_samples", "batch_size", "toy_dim", "bootstrap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VarianceConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 2:
            raise ValueError(f"VarianceConfig.replicates must be an int >= 2, got {self.replicates!r}")
        if self.train_step < 0:
            raise ValueError(f"VarianceConfig.train_step must be >= 0, got {self.train_step!r}")
        if self.model not in models_mod.available():
            raise ValueError(f"VarianceConfig.model must be one of {models_mod.available()}, got {self.model!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"VarianceConfig.threads must be None or a positive int, got {self.threads!r}")

    def key(self) -> dict:
        """The configuration as a dict (what is hashed); defaults of later fields are left out (older runs resume)."""
        d = dataclasses.asdict(self)
        if d["model"] == "default":
            del d["model"]
        if d["threads"] is None:
            del d["threads"]
        return {"benchmark": "variance", **d}


# --------------------------------------------------------------------------- statistics
def _flatten(grads: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    if not names:
        return torch.zeros(0)
    return torch.cat([grads[n].reshape(grads[n].shape[0], -1).double() for n in names], dim=1)


def gradient_stats(
    g: torch.Tensor, truth: torch.Tensor | None = None, *, bootstrap: int = 200, seed: int = 0
) -> dict[str, float]:
    """Variance, SNR, bias and cosine of R estimates ``g [R, P]`` (float64 math).

    Args:
        g: ``[R, P]`` one flattened gradient estimate per row.
        truth: ``[P]`` ground-truth gradient, or None.
        bootstrap: percentile-bootstrap replicates for the variance CI (0: no CI).
        seed: seed of the bootstrap resampling.

    Returns:
        ``{"total_variance", "ci_low", "ci_high", "snr", "grad_norm_sq"}`` plus
        ``{"bias_sq", "rel_bias", "cosine"}`` when ``truth`` is given. Formulas in the
        module docstring.
    """
    g = g.double()
    r, p = g.shape
    if r < 2:
        raise ValueError(f"need at least 2 estimates to measure a variance, got {r}")
    mean = g.mean(0)
    var_el = g.var(0, unbiased=True)  # [P]
    total = float(var_el.sum())
    sd = var_el.sqrt()
    nz = sd > 0
    snr = float((mean[nz].abs() / sd[nz]).mean()) if bool(nz.any()) else math.inf
    out = {
        "total_variance": total,
        "snr": snr,
        "grad_norm_sq": float(mean @ mean),
        "ci_low": math.nan,
        "ci_high": math.nan,
    }
    if bootstrap > 0 and p > 0:
        gram = g @ g.T  # [R, R]
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randint(0, r, (bootstrap, r), generator=gen)
        w = torch.zeros(bootstrap, r, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(bootstrap, r, dtype=torch.float64)
        )
        quad = ((w @ gram) * w).sum(1)
        # the sample variance of a resample with ties is biased by (R-1)/R under the bootstrap
        # distribution (E*[s*^2] = (R-1)/R s^2); rescale so the replicates centre on the estimate
        boot = (w @ gram.diagonal() - quad / r) / (r - 1) * (r / (r - 1))
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out["ci_low"], out["ci_high"] = lo, hi
    if truth is not None:
        t = truth.double().reshape(-1)
        if t.numel() != p:
            raise ValueError(f"truth has {t.numel()} elements but the estimates have {p}")
        diff = mean - t
        bias_sq = float(diff @ diff) - total / r
        tn = float(t.norm())
        out["bias_sq"] = bias_sq
        out["rel_bias"] = math.sqrt(max(bias_sq, 0.0)) / tn if tn > 0 else math.nan
        denom = float(mean.norm()) * tn
        out["cosine"] = float(mean @ t) / denom if denom > 0 else math.nan
    return out


# --------------------------------------------------------------------------- toys
def toy_per_sample_grads(est, f, mu, logvar, replicates: int, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """R estimates of ``d E[f] / d(mu, logvar)``: ``{"mu": [R, D], "logvar": [R, D]}``, batched.

    :func:`estimators.per_sample_grads_expectation` (row r drawn with its own seed).
    """
    import estimators

    return estimators.per_sample_grads_expectation(est, f, mu, logvar, replicates, num_samples=num_samples, seed=seed)


# --------------------------------------------------------------------------- VAE problems
def _snapshots(dataset, steps: Sequence[int], seed: int, batch_size: int = 100, model: str = "default"):
    """Model states after each of ``steps`` steps of reparam + Adam(1e-3) on the torch backend."""
    from bench.measure import train as train_mod

    steps = sorted(set(int(s) for s in steps))
    model0 = models_mod.build_model(dataset, model=model, seed=seed)
    states = {0: {k: v.clone() for k, v in model0.state_dict().items()}}
    last = max(steps)
    if last > 0:
        cfg = train_mod.TrainConfig(
            dataset=dataset.name,
            estimator="reparam",
            backend="torch",
            model=model,
            seed=seed,
            steps=last,
            batch_size=min(batch_size, dataset.train.shape[0]),
            eval_every=last,
            is_k=0,
            checkpoint_every=0,
        )

        def grab(step, model):
            if step in steps:
                states[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        train_mod.train(cfg, dataset=dataset, on_step=grab)
    return {s: states[s] for s in steps}


def _fixed_batch(dataset, batch_size: int, seed: int) -> torch.Tensor:
    x = dataset.train[:batch_size]
    if dataset.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(int(seed) + 7))
    return x


def _make_est(name: str, cv: str):
    from bench.measure.train import make_estimator

    return make_estimator(name, cv)


def _timed(fn, warm: bool):
    """``(fn(), seconds)`` of one timed call (after one untimed call when ``warm``)."""
    box = []
    seconds = time_call(lambda: box.append(fn()), repeats=1, warmup=1 if warm else 0)[0]
    return box[-1], seconds


def configs(
    *,
    problems: Sequence[str] = ("digits",),
    estimators: Sequence[str] = ("reparam",),
    control_variates: Sequence[str] = ("none",),
    backends: Sequence[str] = ("torch",),
    num_samples: Sequence[int] = (1,),
    train_steps: Sequence[int] = (0,),
    seeds: Sequence[int] = (0,),
    **common,
) -> list[VarianceConfig]:
    """The grid problem x train step x estimator (x control variate) x backend x S x seed.

    Skipped combinations: VAE-only estimators and the ``learned`` control variate on
    the toys; train steps other than 0 on the toys (they have no training). An S
    below an estimator's ``min_samples`` (2 for ``vimco`` and leave-one-out) is raised
    to it.
    """
    out = []
    for prob in problems:
        is_toy = prob in TOYS
        for step in [0] if is_toy else train_steps:
            for e in estimators:
                cvs = list(control_variates) if estimators_mod.takes_control_variate(e) else ["none"]
                for cv in cvs:
                    est = _make_est(e, cv)
                    if is_toy and est.vae_only:
                        continue
                    need = est.min_samples
                    for s in dict.fromkeys(max(s, need) for s in num_samples):
                        for b in backends:
                            for seed in seeds:
                                out.append(
                                    VarianceConfig(
                                        problem=prob,
                                        estimator=e,
                                        control_variate=cv,
                                        backend=b,
                                        num_samples=s,
                                        train_step=step,
                                        seed=seed,
                                        **common,
                                    )
                                )
    return out


def variance_tasks(grid: Sequence[VarianceConfig], *, reference_estimates: int = 4096) -> list[Task]:
    """The statistical tasks of ``grid`` (:mod:`bench.run.tasks`).

    First (stage 0) one task per high-sample reference gradient the grid needs,
    then (stage 1) one task per configuration, which reads its reference from
    the run directory: the references are the costliest part of a VAE
    configuration, and workers would otherwise each compute every one.
    """
    refs: dict[str, list] = {}
    for c in grid:
        if c.problem in TOYS or ds_mod.spec(c.problem).likelihood == "gaussian":
            continue  # exact truths, computed where needed
        refs.setdefault(config_hash(_reference_key(c, reference_estimates)), []).append(c)
    tasks = [
        Task(
            "variance_reference",
            {"config": cs[0], "reference_estimates": reference_estimates},
            tuple(c.key() for c in cs),  # done when every configuration that needs it is
            threads=cs[0].threads,
            stage=0,
            label=f"reference gradient {cs[0].problem} step {cs[0].train_step}",
        )
        for cs in refs.values()
    ]
    tasks += [
        Task(
            "variance",
            {"config": c, "reference_estimates": reference_estimates},
            (c.key(),),
            threads=c.threads,
            stage=1,
            gpu=needs_gpu([c.backend]),
            label=f"variance {c.problem} step {c.train_step} {c.estimator}/{c.control_variate}/{c.backend}",
        )
        for c in grid
    ]
    return tasks


#: Per-process caches of the variance tasks: loaded datasets, training snapshots,
#: reference gradients (keyed by what they depend on), and the configurations
#: already warmed up. A worker keeps them for the tasks it runs.
_CACHE: dict = {"ctx": {}, "warmed": set()}


def reset_cache() -> None:
    """Forget this process's cached datasets, snapshots and references (a new sweep starts)."""
    _CACHE["ctx"].clear()
    _CACHE["warmed"].clear()


def _run_task(task: Task, run_dir, resume) -> list[Result]:
    c = task.config
    return _measure(c["config"], _CACHE["ctx"], _CACHE["warmed"], c["reference_estimates"], run_dir)


def _run_reference_task(task: Task, run_dir, resume) -> list[Result]:
    cfg, n = task.config["config"], task.config["reference_estimates"]
    dataset, model, x = _problem(cfg, _CACHE["ctx"])
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    _reference(cfg, _CACHE["ctx"], dataset, model, x, names, n, run_dir)
    return []


register_kind("variance", _run_task)
register_kind("variance_reference", _run_reference_task)


def variance_benchmark(
    grid: Sequence[VarianceConfig],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    writer: ResultsWriter | None = None,
    reference_estimates: int = 4096,
    executor=None,
) -> pd.DataFrame:
    """Measure every configuration of ``grid``; return the rows as a DataFrame.

    Rows of one configuration are appended to ``<out>/results.csv`` together when it
    finishes; with ``resume`` finished configurations are skipped.

    Args:
        grid: from :func:`configs`.
        out, resume, writer: where rows go (see :class:`bench.results.ResultsWriter`).
        progress: tqdm bar on stderr.
        reference_estimates: samples averaged into the high-sample reference gradient of
            an MLP VAE (estimates of 64 samples each for the single-sample bounds, of K
            samples each for the K-sample bounds).
        executor: where the configurations run (:func:`bench.run.executors.make_executor`;
            default this process).
    """
    if writer is None and out is not None:
        writer = ResultsWriter(out, resume=resume)
    reset_cache()  # a new sweep: nothing cached from an earlier one in this process
    tasks = variance_tasks(grid, reference_estimates=reference_estimates)
    rows = run_tasks(tasks, writer=writer, executor=executor, progress=progress, desc="variance")
    return to_frame(rows)


def _problem(cfg: VarianceConfig, ctx: dict):
    """Cached ``(model, x)`` of a VAE problem at ``cfg.train_step``."""
    dkey = (cfg.problem, cfg.data_seed)
    if dkey not in ctx:
        ctx[dkey] = ds_mod.load(cfg.problem, seed=cfg.data_seed, binarize="dynamic")
    dataset = ctx[dkey]
    skey = ("snap", cfg.problem, cfg.seed, cfg.model)
    if skey not in ctx:
        ctx[skey] = {}
    snaps = ctx[skey]
    if cfg.train_step not in snaps:
        # train once to the largest step asked so far for this problem
        wanted = sorted({cfg.train_step, *snaps})
        snaps.update(_snapshots(dataset, wanted, cfg.seed, model=cfg.model))
    model = models_mod.build_model(dataset, model=cfg.model, seed=cfg.seed)
    model.load_state_dict(snaps[cfg.train_step])
    x = _fixed_batch(dataset, min(cfg.batch_size, dataset.train.shape[0]), cfg.seed)
    return dataset, model, x


def _reference_key(cfg: VarianceConfig, n_estimates: int) -> dict:
    """What a VAE problem's reference gradient depends on (its hash names the file it is kept in)."""
    multi = estimators_mod.estimator_class(cfg.estimator).multi_sample
    return {
        "reference": "variance",
        "problem": cfg.problem,
        "model": cfg.model,
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "train_step": cfg.train_step,
        "batch_size": cfg.batch_size,
        "multi": multi,
        "k": cfg.num_samples if multi else 1,
        "estimates": n_estimates,
        "threads": cfg.threads,
    }


def _reference(
    cfg: VarianceConfig, ctx: dict, dataset, model, x, names, n_estimates: int, run_dir=None
) -> torch.Tensor | None:
    """Ground-truth gradient for a VAE problem (exact for ppca, high-sample otherwise).

    A high-sample reference is kept in ``<run_dir>/references/<hash>.pt`` when there
    is a run directory, so the workers of a sweep compute each one once
    (:func:`reference_tasks` computes them before the variance tasks run).
    """
    import estimators
    from bench.results import config_hash, load_checkpoint, save_checkpoint

    spec = _reference_key(cfg, n_estimates)
    multi, k = spec["multi"], spec["k"]
    rkey = ("ref", config_hash(spec))
    if rkey in ctx:
        return ctx[rkey]
    path = Path(run_dir) / "references" / f"{rkey[1]}.pt" if run_dir is not None else None
    ref = None
    if dataset.likelihood == "gaussian" and not (multi and k > 1):
        exact = getattr(model, "exact_loss_grads", None)  # bench.problems.ppca.LinearGaussianVAE: closed form
        if callable(exact):
            g = exact(x)
            ref = torch.cat([g[n].reshape(-1).double() for n in names])
    if ref is None and path is not None and path.exists():
        ref = load_checkpoint(path)["gradient"]
    if ref is None:
        est = estimators.get("iwae" if multi else "reparam")
        s = k if multi else 64
        reps = max(2, n_estimates // s)  # n_estimates samples in all, whatever K is
        with kernels.use_backend("torch"):
            total, done = None, 0
            chunk = 256
            while done < reps:
                rr = min(chunk, reps - done)
                g = estimators.per_sample_grads(est, model, x, rr, num_samples=s, seed=10_000 + done)
                flat = _flatten(g, names).sum(0)
                total = flat if total is None else total + flat
                done += rr
        ref = total / reps
        if path is not None:
            save_checkpoint({"gradient": ref, "key": spec}, path)
    ctx[rkey] = ref
    return ref


def _measure(cfg: VarianceConfig, ctx: dict, warmed: set, reference_estimates: int, run_dir=None) -> list[Result]:
    import estimators

    est = _make_est(cfg.estimator, cfg.control_variate)
    common = {
        "benchmark": "variance",
        "problem": cfg.problem,
        "estimator": cfg.estimator,
        "control_variate": cfg.control_variate,
        "backend": cfg.backend,
        "size": f"S={cfg.num_samples}",
        "step": cfg.train_step,
        "seed": cfg.seed,
    }
    wkey = (cfg.problem, cfg.estimator, cfg.control_variate, cfg.backend)
    warm = wkey not in warmed
    warmed.add(wkey)
    if cfg.problem in TOYS:
        f, mu, logvar, exact = toy_problem(cfg.problem, cfg.toy_dim, cfg.seed)
        with kernels.use_backend(cfg.backend):
            if est.stateful:
                for i in range(cfg.cv_warmup):
                    est.surrogate(f, mu, logvar, cfg.num_samples, seed=50_000 + i)
            grads, secs = _timed(
                lambda: toy_per_sample_grads(est, f, mu, logvar, cfg.replicates, cfg.num_samples, cfg.seed), warm
            )
        groups = {"total": ["mu", "logvar"], "mu": ["mu"], "logvar": ["logvar"]}
        latent_dim = cfg.toy_dim
        truth_all = torch.cat([exact["mu"], exact["logvar"]])
        truths = {"total": truth_all, "mu": exact["mu"], "logvar": exact["logvar"]}
    else:
        dataset, model, x = _problem(cfg, ctx)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        split = models_mod.encoder_decoder_split(names)
        with kernels.use_backend(cfg.backend):
            if est.stateful and cfg.cv_warmup:
                it = dataset.batches(x.shape[0], seed=cfg.seed + 99)
                for i in range(cfg.cv_warmup):
                    est.vae_loss(model, next(it), num_samples=cfg.num_samples, seed=50_000 + i)  # updates the CV only
            grads, secs = _timed(
                lambda: estimators.per_sample_grads(
                    est, model, x, cfg.replicates, num_samples=cfg.num_samples, seed=cfg.seed
                ),
                warm,
            )
        ref = _reference(cfg, ctx, dataset, model, x, names, reference_estimates, run_dir)
        groups = {"total": names, "encoder": split["encoder"], "decoder": split["decoder"]}
        with torch.no_grad():
            latent_dim = int(model.encode(x[:1])[0].shape[-1])
        truths = {"total": ref}
        if ref is not None:
            sizes = [grads[n][0].numel() for n in names]
            parts = dict(zip(names, torch.split(ref, sizes), strict=True))
            truths["encoder"] = torch.cat([parts[n] for n in split["encoder"]]) if split["encoder"] else None
            truths["decoder"] = torch.cat([parts[n] for n in split["decoder"]]) if split["decoder"] else None
    sec_per = secs / cfg.replicates
    evals = float(est.evaluations(cfg.num_samples, latent_dim))
    key = cfg.key()
    rows = [
        make_result(key, **common, metric="seconds_per_estimate", unit="s", value=sec_per),
        make_result(key, **common, metric="evals_per_estimate", unit="evals", value=evals),
    ]
    for group, names_g in groups.items():
        if not names_g:
            continue
        g = _flatten(grads, names_g)
        st = gradient_stats(g, truths.get(group), bootstrap=cfg.bootstrap, seed=cfg.seed)
        prefix = "" if group == "total" else f"{group}_"
        v = st["total_variance"]
        rows.append(
            make_result(
                key,
                **common,
                metric=f"{prefix}variance" if prefix else "total_variance",
                unit="grad^2",
                value=v,
                ci_low=st["ci_low"],
                ci_high=st["ci_high"],
            )
        )
        rows.append(make_result(key, **common, metric=f"{prefix}snr", unit="", value=st["snr"]))
        if group == "total":
            lo, hi = st["ci_low"], st["ci_high"]
            rows.append(
                make_result(
                    key,
                    **common,
                    metric="variance_x_seconds",
                    unit="grad^2*s",
                    value=v * sec_per,
                    ci_low=lo * sec_per,
                    ci_high=hi * sec_per,
                )
            )
            rows.append(
                make_result(
                    key,
                    **common,
                    metric="variance_x_evals",
                    unit="grad^2*evals",
                    value=v * evals,
                    ci_low=lo * evals,
                    ci_high=hi * evals,
                )
            )
            rows.append(make_result(key, **common, metric="grad_norm_sq", unit="grad^2", value=st["grad_norm_sq"]))
        if "bias_sq" in st:
            rows.append(make_result(key, **common, metric=f"{prefix}bias_sq", unit="grad^2", value=st["bias_sq"]))
            bias = math.sqrt(max(st["bias_sq"], 0.0))
            rows.append(make_result(key, **common, metric=f"{prefix}bias", unit="grad", value=bias))
            rows.append(make_result(key, **common, metric=f"{prefix}rel_bias", unit="", value=st["rel_bias"]))
            rows.append(make_result(key, **common, metric=f"{prefix}cosine", unit="", value=st["cosine"]))
    return rows


def summary(df: pd.DataFrame) -> str:
    """One-screen table: variance, SNR, cost-normalised variance and cosine per configuration."""
    if df.empty:
        return "(no variance results)"
    keys = ["problem", "step", "estimator", "control_variate", "backend", "size"]
    want = ["total_variance", "snr", "variance_x_seconds", "variance_x_evals", "cosine"]
    sub = df[df.metric.isin(want)]
    table = sub.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
    table = table[[c for c in want if c in table.columns]]
    return table.to_string(float_format=lambda v: f"{v:.3g}")
