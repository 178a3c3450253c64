"""Gradient-variance benchmark: variance, SNR, cost-normalised variance, bias and cosine.

For a problem (a VAE on a dataset at several points of training, or a Gaussian toy)
and an estimator (x control variate) x backend x number of samples S, it draws R
independent gradient estimates ``g_1..g_R`` (each with S samples) in one batched
call (:func:`estimators.per_sample_grads`, or a replicated surrogate for the toys)
and reports, over all parameters and split into encoder and decoder:

* ``total_variance`` (and ``encoder_variance``/``decoder_variance``): the trace of the
  gradient covariance with a bootstrap interval (``ci_low``/``ci_high``, 95 %);
* ``snr``: the mean over parameter elements of ``|gbar_i| / sd_i`` (Rainforth et al.
  2018), with its interval (``snr_ci_low``/``snr_ci_high`` rows and columns);
* cost-normalised variance (Mohamed et al. 2020, JMLR, sec. 8: compare estimators at
  equal cost): ``variance_x_seconds`` = variance x seconds per estimate, and
  ``variance_x_evals`` = variance x model evaluations per estimate;
* against a ground truth ``g*``: ``bias_sq`` (unbiased for ``||E g - g*||^2``, so it can
  be slightly negative for an unbiased estimator) and ``bias`` with 95% intervals
  whose low end is 0 when the data are consistent with no bias (``bias_ci_low``/
  ``bias_ci_high`` rows too), ``bias_p_value`` (one-sided, ``bias_sq = 0``),
  ``bias_mde`` (the smallest relative bias detectable at 80% power with the R used),
  ``rel_bias`` and ``cosine`` with its interval. The standard errors count the
  reference's own noise. Formulas and citations: :mod:`bench.measure.gradstats`.
  The truth is exact for ``ppca`` (closed-form ELBO gradient,
  :mod:`bench.problems.ppca`) and the Gaussian toys; for an MLP VAE it is a
  high-sample reference: the mean of many ``reparam`` estimates (``iwae`` at the
  same K for the multi-sample bounds, whose objective is the K-sample bound);
* ``replicates``: the R used, chosen by a pilot unless given
  (:func:`_choose_replicates`), and ``replicates_capped`` (1 where the budget's cap
  bound it).

Every configuration at a train point measures the same parameters: the model is
trained to the train points by one common estimator (``train_estimator``, default
``reparam``), and a stateful control variate (moving average, learned baseline)
updates on every step of that trajectory, as NVIL's baseline trains alongside the
model (Mnih & Gregor 2014), so at train point t it is in its state at step t.

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
from bench.measure.gradstats import gradient_stats
from bench.measure.timing import time_call
from bench.problems import datasets as ds_mod
from bench.problems import models as models_mod
from bench.problems.toys import TOYS, toy_family, toy_problem
from bench.results import Result, ResultsWriter, config_hash, make_result, to_frame
from bench.run.tasks import Task, needs_gpu, register_kind, run_tasks

__all__ = [
    "TOYS",
    "VarianceConfig",
    "gradient_stats",
    "toy_family",
    "toy_problem",
    "variance_benchmark",
]


#: Estimates of the pilot that chooses R (``VarianceConfig.replicates=None``).
PILOT_REPLICATES = 16
#: Groups of the Monte Carlo reference gradient: their spread gives its own noise.
REFERENCE_GROUPS = 32


@dataclass(frozen=True)
class VarianceConfig:
    """One variance measurement.

    Attributes:
        problem: a dataset name (a VAE on it) or a toy from :data:`TOYS`.
        estimator, control_variate, backend: what is measured.
        num_samples: S, samples per estimate (K for the multi-sample bounds).
        replicates: R, independent estimates; None chooses R from a pilot of
            :data:`PILOT_REPLICATES` estimates so that a relative bias of
            ``target_rel_bias`` is detectable (:func:`bench.measure.gradstats.replicates_for_bias`),
            at most ``max_replicates``.
        max_replicates: the cap on the chosen R (the run's budget).
        target_rel_bias: the relative bias the chosen R should detect (one-sided 5%, power 80%).
        train_step: the point of training: steps of ``train_estimator`` + Adam(1e-3) from the
            seeded init, on the torch backend. Every configuration at a train point measures
            the same parameters, and a stateful control variate (moving average, learned
            baseline) has updated on every step of that trajectory, as in training.
        train_estimator: the one estimator that trains the model to the train points.
        seed: seeds the model, the batch and the estimates.
        batch_size: examples in the fixed batch x (VAE problems).
        toy_dim: D of the toys.
        bootstrap: bootstrap replicates for the CIs.
        data_seed: seeds the dataset split.
        model: a registered model (:func:`bench.problems.models.register_model`) for
            the VAE problems.
        threads: torch and numba threads the configuration runs with (None: the
            process's); reduction order depends on them, so they are part of it.
        cv_warmup: on the Gaussian toys (no training), estimates a stateful control
            variate makes, updating its state, before it is measured.
    """

    problem: str = "digits"
    estimator: str = "reparam"
    control_variate: str = "none"
    backend: str = "torch"
    num_samples: int = 1
    replicates: int | None = None
    train_step: int = 0
    seed: int = 0
    batch_size: int = 32
    toy_dim: int = 16
    bootstrap: int = 200
    data_seed: int = 0
    cv_warmup: int = 200
    model: str = "default"
    threads: int | None = None
    max_replicates: int = 1024
    target_rel_bias: float = 0.1
    train_estimator: str = "reparam"

    def __post_init__(self) -> None:
        for name in ("num_samples", "batch_size", "toy_dim", "bootstrap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VarianceConfig.{name} must be a positive int, got {v!r}")
        r = self.replicates
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 2):
            raise ValueError(f"VarianceConfig.replicates must be None (chosen by a pilot) or an int >= 2, got {r!r}")
        m = self.max_replicates
        if isinstance(m, bool) or not isinstance(m, int) or m < PILOT_REPLICATES:
            raise ValueError(f"VarianceConfig.max_replicates must be an int >= {PILOT_REPLICATES}, got {m!r}")
        if not (isinstance(self.target_rel_bias, int | float) and 0 < self.target_rel_bias < math.inf):
            raise ValueError(f"VarianceConfig.target_rel_bias must be a positive number, got {self.target_rel_bias!r}")
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
        if d["replicates"] is not None:  # a given R: the pilot's settings do not apply
            del d["max_replicates"], d["target_rel_bias"]
        if d["train_estimator"] == "reparam":
            del d["train_estimator"]
        return {"benchmark": "variance", **d}


# --------------------------------------------------------------------------- statistics
def _flatten(grads: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    if not names:
        return torch.zeros(0)
    return torch.cat([grads[n].reshape(grads[n].shape[0], -1).double() for n in names], dim=1)


# --------------------------------------------------------------------------- toys
def toy_per_sample_grads(est, f, mu, logvar, replicates: int, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """R estimates of ``d E[f] / d(mu, logvar)``: ``{"mu": [R, D], "logvar": [R, D]}``, batched.

    :func:`estimators.per_sample_grads_expectation` (row r drawn with its own seed).
    """
    import estimators

    return estimators.per_sample_grads_expectation(est, f, mu, logvar, replicates, num_samples=num_samples, seed=seed)


def _cv_families(est) -> tuple[str, ...]:
    cv = getattr(est, "cv", None)
    return tuple(cv.families) if cv is not None else tuple(est.families)


def bernoulli_toy_grads(est, f, logits, replicates: int, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """R estimates of ``d E[f] / d logits`` ``{"logits": [R, D]}`` in one call.

    The logits are repeated along a leading batch dim: f is row-wise, so row r of
    the gradient is replicate r's estimate, drawn from its own part of the stream.
    """
    import estimators

    rep = logits.detach().unsqueeze(0).repeat(replicates, 1).requires_grad_(True)
    with torch.enable_grad():
        est.surrogate(f, estimators.Bernoulli(rep), num_samples=num_samples, seed=seed).sum().backward()
    return {"logits": rep.grad}


# --------------------------------------------------------------------------- VAE problems
def _trajectory_config(dataset, last: int, seed: int, batch_size: int, model: str, estimator: str):
    """The training run behind the train points: ``estimator`` + Adam(1e-3), torch backend, no evaluations."""
    from bench.measure import train as train_mod

    return train_mod.TrainConfig(
        dataset=dataset.name,
        estimator=estimator,
        backend="torch",
        model=model,
        seed=seed,
        steps=max(1, last),
        batch_size=min(batch_size, dataset.train.shape[0]),
        eval_every=max(1, last),
        is_k=0,
        checkpoint_every=0,
    )


def _snapshots(
    dataset,
    steps: Sequence[int],
    seed: int,
    batch_size: int = 100,
    model: str = "default",
    estimator: str = "reparam",
    along=None,
):
    """Model states after each of ``steps`` steps of the common training run (:func:`_trajectory_config`).

    ``along(model, x, step)``, when given, is called before every step with the
    model as it is then and the step's batch: a stateful control variate updates
    along the trajectory this way, as it would in training.
    """
    from bench.measure import train as train_mod

    steps = sorted(set(int(s) for s in steps))
    model0 = models_mod.build_model(dataset, model=model, seed=seed)
    states = {0: {k: v.clone() for k, v in model0.state_dict().items()}}
    last = max(steps)
    if last > 0:
        cfg = _trajectory_config(dataset, last, seed, batch_size, model, estimator)
        batches = dataset.batches(cfg.batch_size, seed=cfg.seed) if along is not None else None
        if along is not None:
            along(model0, next(batches), 0)

        def grab(step, model):
            if step in steps:
                states[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if along is not None and step < last:
                along(model, next(batches), step)

        train_mod.train(cfg, dataset=dataset, on_step=grab)
    return {s: states[s] for s in steps}


def _update_along_trajectory(cfg: VarianceConfig, est, dataset) -> None:
    """Put a stateful control variate in its state at ``cfg.train_step``: one update per training step."""
    if cfg.train_step == 0:
        return

    def along(model, x, step):
        with kernels.use_backend(cfg.backend):
            est.vae_loss(model, x, num_samples=cfg.num_samples, seed=50_000 + step)  # updates the state only

    _snapshots(dataset, [cfg.train_step], cfg.seed, model=cfg.model, estimator=cfg.train_estimator, along=along)


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
    the toys; estimators (and control variates) not defined for the problem's latent
    family (``arm`` on a Gaussian, ``reparam`` on the Bernoulli toy); train steps other than 0 on the toys (they have no training). An S
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
                    family = toy_family(prob) if is_toy else "normal"
                    if family not in est.families or family not in _cv_families(est):
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
    skey = ("snap", cfg.problem, cfg.seed, cfg.model, cfg.train_estimator)
    if skey not in ctx:
        ctx[skey] = {}
    snaps = ctx[skey]
    if cfg.train_step not in snaps:
        # train once to the largest step asked so far for this problem
        wanted = sorted({cfg.train_step, *snaps})
        snaps.update(_snapshots(dataset, wanted, cfg.seed, model=cfg.model, estimator=cfg.train_estimator))
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
        "groups": REFERENCE_GROUPS,
        "threads": cfg.threads,
        "train_estimator": cfg.train_estimator,
    }


def _reference(
    cfg: VarianceConfig, ctx: dict, dataset, model, x, names, n_estimates: int, run_dir=None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Ground-truth gradient of a VAE problem and its noise: ``(truth [P], groups [G, P] or None)``.

    Exact for ppca (closed form; no groups). Otherwise the mean of ``n_estimates``
    reparameterized samples (``iwae`` at the same K for the multi-sample bounds, whose
    objective is the K-sample bound), kept as :data:`REFERENCE_GROUPS` group means
    whose spread :func:`bench.measure.gradstats.gradient_stats` counts as the
    reference's own noise. A Monte Carlo reference is kept in
    ``<run_dir>/references/<hash>.pt`` when there is a run directory, so the workers of
    a sweep compute each one once (:func:`variance_tasks` computes them first).
    """
    import estimators
    from bench.results import config_hash, load_checkpoint, save_checkpoint

    spec = _reference_key(cfg, n_estimates)
    multi, k = spec["multi"], spec["k"]
    rkey = ("ref", config_hash(spec))
    if rkey in ctx:
        return ctx[rkey]
    path = Path(run_dir) / "references" / f"{rkey[1]}.pt" if run_dir is not None else None
    ref = groups = None
    if dataset.likelihood == "gaussian" and not (multi and k > 1):
        exact = getattr(model, "exact_loss_grads", None)  # bench.problems.ppca.LinearGaussianVAE: closed form
        if callable(exact):
            g = exact(x)
            ref = torch.cat([g[n].reshape(-1).double() for n in names])
    if ref is None and path is not None and path.exists():
        state = load_checkpoint(path)
        ref, groups = state["gradient"], state["groups"]
    if ref is None:
        est = estimators.get("iwae" if multi else "reparam")
        s = k if multi else 64
        reps = max(REFERENCE_GROUPS, n_estimates // s)  # n_estimates samples in all, whatever K is
        sums = None
        with kernels.use_backend("torch"):
            done, chunk = 0, 256
            while done < reps:
                rr = min(chunk, reps - done)
                g = _flatten(estimators.per_sample_grads(est, model, x, rr, num_samples=s, seed=10_000 + done), names)
                part = torch.zeros(REFERENCE_GROUPS, g.shape[1], dtype=torch.float64)
                part.index_add_(0, (torch.arange(done, done + rr) % REFERENCE_GROUPS), g)  # replicate j -> group j % G
                sums = part if sums is None else sums + part
                done += rr
        counts = torch.bincount(torch.arange(reps) % REFERENCE_GROUPS, minlength=REFERENCE_GROUPS).double()
        groups = sums / counts[:, None]
        ref = sums.sum(0) / reps
        if path is not None:
            save_checkpoint({"gradient": ref, "groups": groups, "key": spec}, path)
    ctx[rkey] = (ref, groups)
    return ref, groups


def _choose_replicates(cfg: VarianceConfig, pilot: torch.Tensor, truth: torch.Tensor | None) -> tuple[int, bool]:
    """``(R, capped)`` from a pilot ``[PILOT_REPLICATES, P]``: enough to detect ``target_rel_bias``.

    The rule (:func:`bench.measure.gradstats.replicates_for_bias`): with
    ``se0 ~= sqrt(2 tr(Var^2)) / R``, a one-sided 5% test has 80% power against a
    relative bias rho when ``R = 2.487 sqrt(2 tr(Var^2)) / (rho^2 ||g*||^2)``; R is at
    least the pilot's size and at most ``max_replicates`` (``capped`` when that binds).
    Without a truth, R is the pilot's size times four, capped.
    """
    from bench.measure.gradstats import gradient_stats, replicates_for_bias

    st = gradient_stats(pilot, bootstrap=0)
    if truth is None:
        want = 4.0 * PILOT_REPLICATES
    else:
        t = truth.double()
        want = replicates_for_bias(st["tr_var_sq"], float(t @ t), cfg.target_rel_bias)
        if not math.isfinite(want):
            want = float(cfg.max_replicates)
    r = max(PILOT_REPLICATES, math.ceil(want))
    return min(r, cfg.max_replicates), r > cfg.max_replicates


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
    groups_ref = None
    if cfg.problem in TOYS and toy_family(cfg.problem) == "bernoulli":
        import estimators as estimators_pkg

        f, logits, _, exact = toy_problem(cfg.problem, cfg.toy_dim, cfg.seed)
        with kernels.use_backend(cfg.backend):
            if est.stateful:
                for i in range(cfg.cv_warmup):
                    leaf = logits.clone().requires_grad_(True)
                    est.surrogate(f, estimators_pkg.Bernoulli(leaf), num_samples=cfg.num_samples, seed=50_000 + i)

        def estimates(r):
            with kernels.use_backend(cfg.backend), est.frozen():
                return bernoulli_toy_grads(est, f, logits, r, cfg.num_samples, cfg.seed)

        groups = {"total": ["logits"]}
        latent_dim = cfg.toy_dim
        truths = {"total": exact["logits"]}
        parts_of = {"total": ["logits"]}
        sizes = {"logits": cfg.toy_dim}
    elif cfg.problem in TOYS:
        f, mu, logvar, exact = toy_problem(cfg.problem, cfg.toy_dim, cfg.seed)
        with kernels.use_backend(cfg.backend):
            if est.stateful:
                for i in range(cfg.cv_warmup):
                    est.surrogate(f, mu, logvar, cfg.num_samples, seed=50_000 + i)

        def estimates(r):
            with kernels.use_backend(cfg.backend):
                return toy_per_sample_grads(est, f, mu, logvar, r, cfg.num_samples, cfg.seed)

        groups = {"total": ["mu", "logvar"], "mu": ["mu"], "logvar": ["logvar"]}
        latent_dim = cfg.toy_dim
        truth_all = torch.cat([exact["mu"], exact["logvar"]])
        truths = {"total": truth_all, "mu": exact["mu"], "logvar": exact["logvar"]}
        parts_of = {"total": ["mu", "logvar"], "mu": ["mu"], "logvar": ["logvar"]}
        sizes = {"mu": cfg.toy_dim, "logvar": cfg.toy_dim}
    else:
        dataset, model, x = _problem(cfg, ctx)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        split = models_mod.encoder_decoder_split(names)
        if est.stateful:
            _update_along_trajectory(cfg, est, dataset)

        def estimates(r):
            with kernels.use_backend(cfg.backend):
                return estimators.per_sample_grads(est, model, x, r, num_samples=cfg.num_samples, seed=cfg.seed)

        ref, groups_ref = _reference(cfg, ctx, dataset, model, x, names, reference_estimates, run_dir)
        groups = {"total": names, "encoder": split["encoder"], "decoder": split["decoder"]}
        with torch.no_grad():
            latent_dim = int(model.encode(x[:1])[0].shape[-1])
        truths = {"total": ref}
        parts_of = {"total": names, "encoder": split["encoder"], "decoder": split["decoder"]}
        sizes = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    replicates, capped = cfg.replicates, False
    if replicates is None:  # a pilot chooses R (it also compiles what the timed call runs)
        pilot = _flatten(estimates(PILOT_REPLICATES), groups["total"])
        replicates, capped = _choose_replicates(cfg, pilot, truths.get("total"))
        warm = False
    grads, secs = _timed(lambda: estimates(replicates), warm)
    # the truth (and the reference's groups) split like the estimates: by parameter group
    order = groups["total"]
    offsets, pos = {}, 0
    for n in order:
        offsets[n] = (pos, pos + sizes[n])
        pos += sizes[n]

    def split_by(vec, group):
        if vec is None or not parts_of.get(group):
            return None
        return torch.cat([vec[..., offsets[n][0] : offsets[n][1]] for n in parts_of[group]], dim=-1)

    for group in groups:
        if group not in truths:
            truths[group] = split_by(truths["total"], group)
    sec_per = secs / replicates
    evals = float(est.evaluations(cfg.num_samples, latent_dim))
    key = cfg.key()
    rows = [
        make_result(key, **common, metric="seconds_per_estimate", unit="s", value=sec_per),
        make_result(key, **common, metric="evals_per_estimate", unit="evals", value=evals),
        make_result(key, **common, metric="replicates", unit="estimates", value=float(replicates)),
        make_result(key, **common, metric="replicates_capped", unit="", value=float(capped)),
    ]
    sq_dev = {}
    for group, names_g in groups.items():
        if not names_g:
            continue
        g = _flatten(grads, names_g)
        st = gradient_stats(
            g, truths.get(group), truth_groups=split_by(groups_ref, group), bootstrap=cfg.bootstrap, seed=cfg.seed
        )
        rows += _stat_rows(key, common, group, st, sec_per, evals)
        sq_dev[group] = ((g - g.mean(0)) ** 2).sum(1).numpy()
    if run_dir is not None:
        save_replicates(run_dir, config_hash(key), sq_dev)
    return rows


#: Sub-directory of a run with each variance configuration's per-replicate squared deviations.
REPLICATES_DIR = "replicates"


def save_replicates(run_dir, chash: str, sq_dev: dict) -> Path:
    """Write ``{group: ||g_r - gbar||^2 [R]}`` to ``<run_dir>/replicates/<hash>.npz`` (atomically).

    Replicate r of every configuration at one problem, train point and seed reads
    block r of the same noise stream, so the report pairs configurations by r for
    the confidence intervals of their variance ratios.
    """
    import os
    import tempfile

    import numpy as np

    folder = Path(run_dir) / REPLICATES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{chash}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **sq_dev)
    os.replace(tmp, path)
    return path


def _stat_rows(key: dict, common: dict, group: str, st: dict, sec_per: float, evals: float) -> list[Result]:
    """The result rows of one parameter group's :func:`gradient_stats`, each estimate with its interval."""
    prefix = "" if group == "total" else f"{group}_"

    def row(metric, value, unit="", lo=math.nan, hi=math.nan):
        return make_result(key, **common, metric=f"{prefix}{metric}", unit=unit, value=value, ci_low=lo, ci_high=hi)

    v, lo, hi = st["total_variance"], st["ci_low"], st["ci_high"]
    rows = [
        make_result(
            key,
            **common,
            metric=f"{prefix}variance" if prefix else "total_variance",
            unit="grad^2",
            value=v,
            ci_low=lo,
            ci_high=hi,
        ),  # fmt: skip
        row("snr", st["snr"], "", st["snr_ci_low"], st["snr_ci_high"]),
        row("snr_ci_low", st["snr_ci_low"]),
        row("snr_ci_high", st["snr_ci_high"]),
    ]
    if group == "total":
        rows += [
            row("variance_x_seconds", v * sec_per, "grad^2*s", lo * sec_per, hi * sec_per),
            row("variance_x_evals", v * evals, "grad^2*evals", lo * evals, hi * evals),
            row("grad_norm_sq", st["grad_norm_sq"], "grad^2"),
        ]
    if "bias_sq" in st:
        rows += [
            row("bias_sq", st["bias_sq"], "grad^2", st["bias_sq_ci_low"], st["bias_sq_ci_high"]),
            row("bias", st["bias"], "grad", st["bias_ci_low"], st["bias_ci_high"]),
            row("bias_ci_low", st["bias_ci_low"], "grad"),
            row("bias_ci_high", st["bias_ci_high"], "grad"),
            row("bias_p_value", st["bias_p_value"]),
            row("bias_mde", st["bias_mde"]),
            row("rel_bias", st["rel_bias"]),
            row("cosine", st["cosine"], "", st["cosine_ci_low"], st["cosine_ci_high"]),
            row("cosine_ci_low", st["cosine_ci_low"]),
            row("cosine_ci_high", st["cosine_ci_high"]),
        ]
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
