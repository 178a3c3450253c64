"""Convergence benchmark: full VAE training per estimator x backend x seed.

Each configuration trains the dataset's default model (:func:`bench.problems.models.build_model`)
for the same number of steps with one estimator on one kernel backend and
records, at every evaluation step, the training bound (the mean over the steps since
the last evaluation of the per-example bound the estimator returns: the ELBO, or
the K-sample bound for ``iwae``/``dreg``/``vimco``), the validation ELBO (one
reparameterized sample per example, analytic KL, fixed noise, so it is comparable
across estimators), and the training wall time so far (evaluations excluded). At
the end it records the time and step at which the validation ELBO first reached
``target_elbo`` (if given), the test ELBO, the test log-likelihood estimated by
importance sampling,

    log p(x) ~= log (1/k) sum_j p(x, z_j) / q(z_j | x),   z_j ~ q(z | x)

(Burda et al. 2016, eq. 8; k = 1000 by default, Burda et al. use 5000) with the
standard error of its mean over test examples, and the training throughput
(examples per second). Before the first timed step, one untimed step on copies
of the model and estimator (:func:`warm_up`) compiles the kernels (numba's JIT),
so neither wall time nor throughput includes compilation.

Reproducibility: batch ``i`` depends only on ``(seed, i)`` (:meth:`Dataset.batches`);
before step ``i`` the torch generator is seeded from ``(seed, i)``, so the estimator's
noise, drawn from the shared Philox stream (:func:`kernels.normal_noise`, keyed by a
seed taken from that generator), is the same on every backend and after a resume:
backends give the same curve and differ only in time. A checkpoint of model,
optimizer and estimator state (plus the history so far) is written every
``checkpoint_every`` steps to ``<out>/checkpoints/<config_hash>.pt``; ``--resume``
continues from it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import estimators as estimators_mod
import kernels
from bench.measure.timing import quantile, time_round_robin
from bench.problems import datasets as ds_mod
from bench.problems import models as models_mod
from bench.results import Result, ResultsWriter, load_checkpoint, make_result, save_checkpoint, to_frame
from bench.run.tasks import Task, needs_gpu, register_kind, run_tasks

__all__ = [
    "TrainConfig",
    "evaluate_elbo",
    "importance_sampled_log_likelihood",
    "lockstep_throughput",
    "make_estimator",
    "make_optimizer",
    "train",
    "train_benchmark",
    "train_step",
]


OPTIMIZERS = ("sgd", "adam", "rmsprop")
#: The estimators the quick preset trains (those of them that are registered).
QUICK_ESTIMATORS = ("reparam", "stl", "score_function", "iwae", "dreg", "vimco")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """One training configuration (its hash identifies it in the results).

    Attributes:
        dataset: registered dataset name.
        estimator: registered estimator name.
        control_variate: ``"none"`` or a control variate of ``score_function``.
        backend: kernel backend for the whole run.
        seed: seeds the model initialisation, batches and noise.
        steps: optimizer steps.
        batch_size: examples per step.
        num_samples: Monte Carlo samples per example (K for the multi-sample bounds).
        kl: ``"analytic"``, ``"mc"`` or None (the estimator's default).
        optimizer: ``"sgd"``, ``"adam"`` or ``"rmsprop"``.
        lr: learning rate.
        eval_every: steps between evaluations (and the last step).
        eval_size: at most this many validation rows per evaluation (None: all).
        is_k: importance samples per test example (0 skips the estimate).
        test_size: at most this many test rows for the final estimates (None: all).
        target_elbo: validation ELBO whose first crossing is timed (None: not timed).
        binarize: dataset binarization.
        data_seed: seeds the dataset split (the same for every configuration).
        split: dataset split counts or fractions (None: the dataset's default).
        model: a registered model (:func:`bench.problems.models.register_model`).
        hidden, z_dim, activation: model overrides (None: the defaults).
        output_bias: start the decoder's output bias at the logit of the training mean.
        checkpoint_every: steps between checkpoints (0: none).
        threads: torch and numba threads the run uses (None: the process's); the
            reduction order depends on them, so they are part of the configuration.
    """

    dataset: str = "digits"
    estimator: str = "reparam"
    control_variate: str = "none"
    backend: str = "torch"
    seed: int = 0
    steps: int = 300
    batch_size: int = 100
    num_samples: int = 1
    kl: str | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    eval_every: int = 50
    eval_size: int | None = None
    is_k: int = 1000
    test_size: int | None = None
    target_elbo: float | None = None
    binarize: str = "dynamic"
    data_seed: int = 0
    split: tuple | None = None
    model: str = "default"
    hidden: tuple | None = None
    z_dim: int | None = None
    activation: str | None = None
    output_bias: bool = True
    checkpoint_every: int = 100
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_samples", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        for name in ("is_k", "checkpoint_every", "seed", "data_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative int, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.kl not in (None, "analytic", "mc"):
            raise ValueError(f"TrainConfig.kl must be 'analytic', 'mc' or None, got {self.kl!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"TrainConfig.threads must be None or a positive int, got {self.threads!r}")
        if self.model not in models_mod.available():
            raise ValueError(f"TrainConfig.model must be one of {models_mod.available()}, got {self.model!r}")
        cvs = estimators_mod.control_variates.names()
        if self.control_variate not in cvs:
            raise ValueError(f"TrainConfig.control_variate must be one of {cvs}, got {self.control_variate!r}")

    def key(self) -> dict:
        """The configuration as a dict (what is hashed), tagged with the benchmark.

        The default model is left out, so configurations from before models were
        selectable keep their hashes (and their runs resume).
        """
        d = dataclasses.asdict(self)
        if d["model"] == "default":
            del d["model"]
        if d["threads"] is None:
            del d["threads"]
        return {"benchmark": "train", **d}


# --------------------------------------------------------------------------- pieces
def make_estimator(name: str, control_variate: str = "none", **options):
    """``estimators.get(name, ...)`` with the CLI's ``"none"`` mapped to None.

    The control variate is passed only to estimators that take one
    (:func:`estimators.takes_control_variate`).
    """
    import estimators

    if control_variate != "none":
        if not estimators.takes_control_variate(name):
            takers = [e for e in estimators.available() if estimators.takes_control_variate(e)]
            raise ValueError(f"control variate {control_variate!r} applies to {takers}, not {name!r}")
        options["control_variate"] = control_variate
    return estimators.get(name, **options)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """SGD, Adam (Kingma & Ba 2015) or RMSprop (Tieleman & Hinton 2012) with torch's defaults otherwise."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


def step_seed(seed: int, step: int) -> int:
    """Seed of the noise of training step ``step`` (a fixed mix of the two, < 2**62)."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + 1) % (2**62)


def log_px_given_z(model, x: torch.Tensor, decoded) -> torch.Tensor:
    """``log p(x|z)`` through the kernel API: Bernoulli for logits, Gaussian for ``(mean, logvar)``."""
    if isinstance(decoded, tuple):
        mean, logvar = decoded
        return kernels.normal_log_prob(x, mean, logvar)
    return kernels.bernoulli_log_prob(x, decoded)


@torch.no_grad()
def evaluate_elbo(model, x: torch.Tensor, *, seed: int = 0, chunk: int = 2048) -> torch.Tensor:
    """Single-sample ELBO per example ``[N]`` with analytic KL and noise from ``seed``.

    ``ELBO(x) = log p(x | z) - KL(q(z|x) || N(0, I))``, ``z = mu + sigma * eps``
    (Kingma & Welling 2014, eq. 10); the noise is the shared stream, so the value
    is the same on every backend.
    """
    out = []
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        mu, logvar = model.encode(xb)
        eps = kernels.normal_noise(mu.shape, seed=seed + i, dtype=mu.dtype)
        z, kl = kernels.normal_rsample_kl(mu, logvar, eps)
        out.append(log_px_given_z(model, xb, model.decode(z)) - kl)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def importance_sampled_log_likelihood(
    model, x: torch.Tensor, k: int = 1000, *, seed: int = 0, max_elements: int = 1 << 23
) -> torch.Tensor:
    """Importance-sampling estimate of ``log p(x)`` per example, ``[N]``.

    ``log p(x) ~= logsumexp_j [log p(x|z_j) + log p(z_j) - log q(z_j|x)] - log k`` with
    ``z_j ~ q(z|x)`` (Burda et al. 2016, eq. 8 and sec. 5; Rezende et al. 2014,
    appendix E). A lower bound in expectation that tightens as ``k`` grows and
    converges to ``log p(x)``. The ``k`` samples are processed in chunks whose
    decoder output holds at most ``max_elements`` numbers, with a streaming
    logsumexp; noise comes from the shared stream keyed by ``seed``.

    Args:
        model: follows the model protocol (``encode``, ``decode``).
        x: ``[N, D]`` data.
        k: importance samples per example.
        seed: noise seed.
        max_elements: memory bound per chunk.

    Returns:
        ``[N]`` estimates of ``log p(x_n)`` (float64).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n, d = x.shape
    rows = max(1, min(n, max_elements // max(1, d)))
    out = []
    for i in range(0, n, rows):
        xb = x[i : i + rows]
        mu, logvar = model.encode(xb)
        kc = max(1, min(k, max_elements // max(1, xb.shape[0] * d)))
        acc = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64)
        for j in range(0, k, kc):
            kk = min(kc, k - j)
            eps = kernels.normal_noise(
                (kk, *mu.shape), seed=(seed * 1_000_003 + i * 7_919 + j) % (2**62), dtype=mu.dtype
            )
            z = kernels.normal_rsample(mu, logvar, eps)  # [kk, B, K]
            zero = z.new_zeros(()).expand(z.shape[-1])  # broadcast, never materialised
            log_w = (
                log_px_given_z(model, xb, model.decode(z))
                + kernels.normal_log_prob(z, zero, zero)  # log N(z; 0, I), the prior
                - kernels.normal_log_prob(z, mu, logvar)
            ).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, dim=0))
        out.append(acc - math.log(k))
    return torch.cat(out)


def step_noise(est, num_samples: int, batch: int, z_dim: int, seed: int) -> torch.Tensor:
    """The step's noise: ``est.noise_shape(S, (B, K))`` normals from the shared stream for ``seed``."""
    return kernels.normal_noise(est.noise_shape(num_samples, (batch, z_dim)), seed=seed)


def warm_up(est, model, x: torch.Tensor, num_samples: int, kl: str, z_dim: int, seed: int) -> None:
    """One untimed forward and backward of the step on copies of ``est`` and ``model``.

    Compiles what the step's kernels need (numba's JIT on the first call with
    each signature, seconds) outside the timed region, so ``examples_per_s``
    measures steady-state training. It works on deep copies and restores torch's
    CPU generator, so the training run itself (its curve) is unchanged.
    """
    rng = torch.random.get_rng_state()
    try:
        est_c, model_c = copy.deepcopy(est), copy.deepcopy(model)
        eps = step_noise(est_c, num_samples, x.shape[0], z_dim, seed)
        loss, _ = est_c.vae_loss(model_c, x, num_samples=num_samples, kl=kl, eps=eps)
        loss.backward()
    finally:
        torch.random.set_rng_state(rng)


def train_step(cfg: TrainConfig, est, model, optim, x: torch.Tensor, z_dim: int, step: int) -> torch.Tensor:
    """One optimisation step ``step`` of ``cfg`` on batch ``x``; returns the per-example bound ``[B]``.

    Seeds torch's generator and draws the step's noise from ``(cfg.seed, step)``
    (see the module doc), so every backend takes the same step.
    """
    sseed = step_seed(cfg.seed, step)
    torch.default_generator.manual_seed(sseed)  # any other randomness of the estimator (cheaper than torch.manual_seed)
    eps = step_noise(est, cfg.num_samples, x.shape[0], z_dim, sseed)
    optim.zero_grad(set_to_none=True)
    loss, elbo = est.vae_loss(model, x, num_samples=cfg.num_samples, kl=cfg.kl, eps=eps)
    loss.backward()
    optim.step()
    return elbo


def _build_run(cfg: TrainConfig, dataset: ds_mod.Dataset):
    """``(model, estimator, optimizer, z_dim)`` of a fresh run of ``cfg`` (seeded model)."""
    model = models_mod.build_model(
        dataset,
        model=cfg.model,
        hidden=cfg.hidden,
        z_dim=cfg.z_dim,
        activation=cfg.activation,
        seed=cfg.seed,
        output_bias=cfg.output_bias,
    )
    est = make_estimator(cfg.estimator, cfg.control_variate)
    optim = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)  # an estimator updates its own parameters
    with torch.no_grad():
        z_dim = int(model.encode(dataset.train[:1])[0].shape[-1])
    return model, est, optim, z_dim


def lockstep_throughput(
    configs: Sequence[TrainConfig], *, dataset: ds_mod.Dataset | None = None, progress: bool = False
) -> list[dict]:
    """Train several configurations in lockstep and time every step: a paired throughput comparison.

    Each configuration trains its own model exactly as :func:`train` does (same
    batches, noise, optimizer; no evaluations). Step ``i`` of every configuration
    runs before step ``i + 1`` of any, in the balanced orders of
    :func:`bench.measure.timing.time_round_robin`, so a burst of load on a shared
    machine hits all of them alike; whole runs one after another do not (see
    docs/timing.md for how far apart they came out).

    Args:
        configs: configurations of one dataset (e.g. the same one on two backends);
            each step runs under ``kernels.use_backend(cfg.backend)``.
        dataset: the loaded dataset (else loaded from the first configuration).
        progress: show a tqdm bar on stderr.

    Returns:
        Per configuration: ``{"config", "step_s" (list of seconds per step),
        "examples_per_s" (batch size over the median step time),
        "examples_per_s_mean" (all examples over all step time),
        "train_elbo" (list: the mean bound of each step)}``. One untimed warm-up
        step per configuration (:func:`warm_up`) compiles what it needs first.
    """
    cfgs = list(configs)
    if not cfgs:
        raise ValueError("lockstep_throughput: configs must name at least one TrainConfig, got none")
    if dataset is None:
        c = cfgs[0]
        dataset = ds_mod.load(c.dataset, seed=c.data_seed, binarize=c.binarize, split=c.split)
    runs = []
    for cfg in cfgs:
        model, est, optim, z_dim = _build_run(cfg, dataset)
        with kernels.use_backend(cfg.backend):
            warm_up(est, model, dataset.train[: cfg.batch_size], cfg.num_samples, cfg.kl, z_dim, cfg.seed)
        model.train()
        batches = dataset.batches(cfg.batch_size, seed=cfg.seed)
        runs.append({"cfg": cfg, "est": est, "model": model, "optim": optim, "z_dim": z_dim, "batches": batches,
                     "step_s": [], "elbo": [], "examples": 0})  # fmt: skip
    steps = max(c.steps for c in cfgs)
    bar = _bar(steps, "lockstep " + " | ".join(f"{c.estimator}/{c.backend}" for c in cfgs), progress)

    def one_step(run) -> None:
        cfg = run["cfg"]
        step = len(run["elbo"]) + 1
        if step > cfg.steps:
            return  # this run is done; its extra timings are dropped below
        x = next(run["batches"])
        elbo = train_step(cfg, run["est"], run["model"], run["optim"], x, run["z_dim"], step)
        run["elbo"].append(float(elbo.detach().mean()))
        run["examples"] += x.shape[0]
        if bar is not None and run is runs[0]:
            bar.update(1)

    times = time_round_robin(
        {i: (lambda run=run: one_step(run)) for i, run in enumerate(runs)},
        repeats=steps,
        warmup=0,
        around=lambda i: kernels.use_backend(runs[i]["cfg"].backend),
    )
    if bar is not None:
        bar.close()
    out = []
    for i, run in enumerate(runs):
        run["step_s"] = times[i][: run["cfg"].steps]
        median = quantile(run["step_s"], 0.5)
        out.append(
            {
                "config": run["cfg"],
                "step_s": run["step_s"],
                "examples_per_s": run["cfg"].batch_size / median,
                "examples_per_s_mean": run["examples"] / sum(run["step_s"]),
                "train_elbo": run["elbo"],
            }
        )
    return out


# --------------------------------------------------------------------------- training
def train(
    config: TrainConfig,
    *,
    dataset: ds_mod.Dataset | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    return_model: bool = False,
):
    """Train one configuration and return its rows (and optionally the model).

    Args:
        config: the :class:`TrainConfig`.
        dataset: a loaded dataset (else loaded from the config).
        checkpoint_dir: where ``<config_hash>.pt`` checkpoints go (None: no checkpoints).
        resume: continue from the checkpoint in ``checkpoint_dir`` if one exists.
        progress: show a tqdm bar on stderr.
        on_step: called as ``on_step(step, model)`` after each step (snapshots; tests interrupt with it).
        return_model: also return the trained model.

    Returns:
        ``list[Result]`` (metrics ``train_elbo``, ``val_elbo``, ``wall_s`` per evaluation
        step; ``examples_per_s``, ``test_elbo``, ``test_ll`` (+ ``test_ll_se``),
        ``time_to_target_s``/``steps_to_target`` at the end), or ``(rows, model)``.
    """
    cfg = config
    key = cfg.key()
    from bench.results import config_hash

    chash = config_hash(key)
    if dataset is None:
        dataset = ds_mod.load(cfg.dataset, seed=cfg.data_seed, binarize=cfg.binarize, split=cfg.split)
    model, est, optim, z_dim = _build_run(cfg, dataset)
    history: list[dict] = []
    start, wall = 0, 0.0
    ckpt_path = Path(checkpoint_dir) / f"{chash}.pt" if checkpoint_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("config_hash") != chash:
            raise ValueError(f"checkpoint {ckpt_path} belongs to another configuration")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        est.load_state_dict(state.get("estimator", {}))
        start, wall, history = state["step"], state["wall"], state["history"]

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        save_checkpoint(
            {
                "config_hash": chash,
                "config": key,
                "step": step,
                "wall": wall,
                "history": history,
                "model": model.state_dict(),
                "optimizer": optim.state_dict(),
                "estimator": est.state_dict(),
            },
            ckpt_path,
        )

    val = dataset.val if dataset.val.shape[0] else dataset.train
    if cfg.eval_size is not None:
        val = val[: cfg.eval_size]
    batches = dataset.batches(cfg.batch_size, seed=cfg.seed, start=start)
    run_sum, run_n = 0.0, 0
    bar = _bar(cfg.steps, f"train {cfg.estimator}/{cfg.control_variate}/{cfg.backend}/s{cfg.seed}", progress, start)
    model.train()
    with kernels.use_backend(cfg.backend):
        if start < cfg.steps:
            warm_up(est, model, dataset.train[: cfg.batch_size], cfg.num_samples, cfg.kl, z_dim, cfg.seed)
        for step in range(start + 1, cfg.steps + 1):
            x = next(batches)
            t0 = time.perf_counter()
            elbo = train_step(cfg, est, model, optim, x, z_dim, step)
            wall += time.perf_counter() - t0
            run_sum += float(elbo.detach().mean())
            run_n += 1
            if not math.isfinite(run_sum):
                raise FloatingPointError(
                    f"training diverged at step {step} ({cfg.estimator}, {cfg.backend}, lr={cfg.lr}): bound is {run_sum}"
                )
            if step % cfg.eval_every == 0 or step == cfg.steps:
                v = float(evaluate_elbo(model, val, seed=cfg.data_seed + 17).mean())
                history.append({"step": step, "train_elbo": run_sum / run_n, "val_elbo": v, "wall_s": wall})
                run_sum, run_n = 0.0, 0
                if bar is not None:
                    bar.set_postfix(val_elbo=f"{v:.2f}")
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                checkpoint(step)
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(step, model)
        if bar is not None:
            bar.close()
        rows = _rows(cfg, key, history, wall, model, dataset)
    return (rows, model) if return_model else rows


def _bar(total, desc, enabled, initial=0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def _rows(cfg: TrainConfig, key: dict, history: list[dict], wall: float, model, dataset) -> list[Result]:
    common = {
        "benchmark": "train",
        "problem": cfg.dataset,
        "estimator": cfg.estimator,
        "control_variate": cfg.control_variate,
        "backend": cfg.backend,
        "size": f"B={cfg.batch_size}",
        "seed": cfg.seed,
    }
    rows = []
    for h in history:
        rows.append(make_result(key, **common, metric="train_elbo", unit="nats", step=h["step"], value=h["train_elbo"]))
        rows.append(make_result(key, **common, metric="val_elbo", unit="nats", step=h["step"], value=h["val_elbo"]))
        rows.append(make_result(key, **common, metric="wall_s", unit="s", step=h["step"], value=h["wall_s"]))
    rows.append(
        make_result(
            key,
            **common,
            metric="examples_per_s",
            unit="examples/s",
            step=cfg.steps,
            value=cfg.steps * cfg.batch_size / wall,
        )
    )
    if cfg.target_elbo is not None:
        hit = next((h for h in history if h["val_elbo"] >= cfg.target_elbo), None)
        if hit is not None:
            rows.append(
                make_result(key, **common, metric="time_to_target_s", unit="s", step=hit["step"], value=hit["wall_s"])
            )
            rows.append(
                make_result(key, **common, metric="steps_to_target", unit="steps", step=hit["step"], value=hit["step"])
            )
    test = dataset.test if dataset.test.shape[0] else dataset.val
    if cfg.test_size is not None:
        test = test[: cfg.test_size]
    model.eval()
    with kernels.use_backend(cfg.backend):
        elbo = evaluate_elbo(model, test, seed=cfg.data_seed + 29).double()
        rows.append(_with_se(key, common, "test_elbo", elbo, cfg.steps, extra={"n_test": int(test.shape[0])}))
        if cfg.is_k > 0:
            ll = importance_sampled_log_likelihood(model, test, cfg.is_k, seed=cfg.data_seed + 31)
            rows.append(_with_se(key, common, "test_ll", ll, cfg.steps))
            se = float(ll.std() / math.sqrt(ll.numel())) if ll.numel() > 1 else math.nan
            rows.append(make_result(key, **common, metric="test_ll_se", unit="nats", step=cfg.steps, value=se))
    return rows


def _with_se(key, common, metric, values: torch.Tensor, step: int, extra=None) -> Result:
    m = float(values.mean())
    se = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else math.nan
    return make_result(
        key, **common, metric=metric, unit="nats", step=step, value=m, ci_low=m - 1.96 * se, ci_high=m + 1.96 * se
    )


# --------------------------------------------------------------------------- the benchmark
def configs(
    *,
    datasets: Sequence[str] = ("digits",),
    estimators: Sequence[str] = ("reparam",),
    control_variates: Sequence[str] = ("none",),
    backends: Sequence[str] = ("torch",),
    seeds: Sequence[int] = (0,),
    **common,
) -> list[TrainConfig]:
    """The grid ``dataset x estimator (x control variate for score_function) x backend x seed``.

    Estimators that need several samples (``vimco``, and ``score_function`` with the
    leave-one-out baseline: their ``min_samples``) get that many when the grid's
    ``num_samples`` is smaller.
    """
    out = []
    for d in datasets:
        for e in estimators:
            cvs = list(control_variates) if estimators_mod.takes_control_variate(e) else ["none"]
            for cv in cvs:
                for b in backends:
                    for s in seeds:
                        extra = dict(common)
                        need = make_estimator(e, cv).min_samples
                        if extra.get("num_samples", 1) < need:
                            extra["num_samples"] = need
                        out.append(TrainConfig(dataset=d, estimator=e, control_variate=cv, backend=b, seed=s, **extra))
    return out


def train_tasks(grid: Sequence[TrainConfig]) -> list[Task]:
    """One statistical task per training configuration (:mod:`bench.run.tasks`)."""
    return [
        Task(
            "train",
            c,
            (c.key(),),
            threads=c.threads,
            gpu=needs_gpu([c.backend]),
            label=f"train {c.dataset} {c.estimator}/{c.control_variate}/{c.backend} seed {c.seed}",
        )
        for c in grid
    ]


#: Loaded datasets of this process's training tasks.
_DATASETS: dict = {}


def _run_task(task: Task, run_dir, resume) -> list[Result]:
    cfg = task.config
    dkey = (cfg.dataset, cfg.data_seed, cfg.binarize, cfg.split)
    if dkey not in _DATASETS:
        _DATASETS.clear()  # one dataset at a time: a sweep's tasks mostly share one
        _DATASETS[dkey] = ds_mod.load(cfg.dataset, seed=cfg.data_seed, binarize=cfg.binarize, split=cfg.split)
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    return train(cfg, dataset=_DATASETS[dkey], checkpoint_dir=ckpt_dir, resume=resume)


register_kind("train", _run_task)


def train_benchmark(
    grid: Sequence[TrainConfig],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    writer: ResultsWriter | None = None,
    executor=None,
) -> pd.DataFrame:
    """Run every configuration of ``grid``; return all rows as a DataFrame.

    With ``out`` (or ``writer``), each configuration's rows are appended to
    ``results.csv`` as it finishes and checkpoints go to ``<out>/checkpoints``;
    with ``resume``, finished configurations are skipped and an interrupted one
    continues from its checkpoint. ``executor`` says where the configurations
    run (:func:`bench.run.executors.make_executor`; default this process).
    """
    if writer is None and out is not None:
        writer = ResultsWriter(out, resume=resume)
    rows = run_tasks(
        train_tasks(grid), writer=writer, executor=executor, resume=resume, progress=progress, desc="train"
    )
    return to_frame(rows)


#: What the examples/s of a training table are, and where to compare backends' speed instead.
EXAMPLES_PER_S_NOTE = (
    "examples/s: batch size over each run's median step time. The runs ran one after another, and whole "
    "runs of one configuration differed by up to 30% on a shared 2-core machine, so compare backends' "
    "speed in the Speed section, where their steps are timed interleaved, not here."
)


def summary(df: pd.DataFrame) -> str:
    """One-screen table: final val ELBO, test log-likelihood (se), examples/s per configuration."""
    if df.empty:
        return "(no training results)"
    keys = ["problem", "estimator", "control_variate", "backend"]
    last = df[df.metric == "val_elbo"].sort_values("step").groupby([*keys, "seed"]).tail(1)
    piv = {
        "val_elbo": last.groupby(keys)["value"].mean(),
        "test_ll": df[df.metric == "test_ll"].groupby(keys)["value"].mean(),
        "test_ll_se": df[df.metric == "test_ll_se"].groupby(keys)["value"].mean(),
        "examples/s": df[df.metric == "examples_per_s"].groupby(keys)["value"].mean(),
    }
    table = pd.DataFrame(piv)
    text = table.to_string(float_format=lambda v: f"{v:,.2f}")
    if df["backend"].nunique() > 1:
        text += "\n" + EXAMPLES_PER_S_NOTE.replace("Speed section", "throughput table")
    return text
