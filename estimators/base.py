"""The estimator protocol, the model protocol and the helpers every estimator shares.

**Gaussian expectations.** Every estimator estimates the gradient of

    F(mu, logvar) = E_{z ~ N(mu, diag exp(logvar))}[f(z)]

with respect to ``mu``, ``logvar`` and whatever ``f`` closes over, through a
*surrogate*: a tensor whose value is the Monte Carlo objective and whose
gradient is the estimate, built as ``value + (surrogate - surrogate.detach())``
(Schulman et al. 2015, "Gradient estimation using stochastic computation
graphs"; the form of pyro's ``trace_elbo``). See :meth:`Estimator.surrogate`.

**The model protocol** (the VAE objective :meth:`Estimator.vae_loss`):

* ``model.encode(x [B, Dx]) -> (mu [B, Dz], logvar [B, Dz])``: q(z|x) =
  N(mu, diag exp(logvar));
* ``model.decode(z [..., B, Dz])``: ``-> logits [..., B, Dx]`` for a Bernoulli
  decoder or ``-> (mean [..., B, Dx], logvar [..., B, Dx])`` for a Gaussian one;
  decoders must accept any number of leading sample dims;
* ``model.likelihood``: ``"bernoulli"`` or ``"gaussian"``, saying which;
* optionally ``model.encoder`` / ``model.decoder`` submodules holding the
  parameters that ``encode`` / ``decode`` use (parameter names then start with
  ``encoder.`` / ``decoder.``); :func:`estimators.per_sample_grads` uses the
  split to skip work, and without it treats every parameter as both;
* optionally ``model.decoder_vjp(z, cotangents, rep_dim) -> {name: [R, *shape]}``:
  per-replicate vector-Jacobian products of ``decode`` in the decoder's
  parameters, for ``z`` whose dim ``rep_dim`` holds R replicates and cotangents
  shaped like ``decode(z)``'s outputs (equal to ``torch.func.vmap`` over a
  ``vjp`` of ``decode`` along ``rep_dim``); :func:`estimators.per_sample_grads`
  calls it instead of that vmap, which recomputes the decoder's forward
  (:class:`bench.problems.ppca.LinearGaussianVAE` and
  :class:`bench.problems.models.MLPVAE` have one); a hook that returns
  ``NotImplemented`` declines, and the vmap runs;
* optionally ``model.decoder_layers() -> {submodule name: nn.Linear}``: linear
  layers whose weights and biases are every trainable decoder parameter, each
  used only through its layer's forward over the last dim, on inputs whose
  leading dims are z's in z's order (no reshape or permute of them inside
  ``decode``), with inputs and outputs not modified in place. :func:`estimators.per_sample_grads` then
  records each layer's input and output while the objective runs, takes the
  cotangents at the outputs in its one backward pass and forms the
  per-replicate gradients from them (no second pass through the decoder); it
  is tried before ``decoder_vjp`` (:class:`bench.problems.models.MLPVAE` has one), and
  ``NotImplemented`` declines it.

The densities are evaluated here, through the public kernel API
(:func:`kernels.bernoulli_log_prob`, :func:`kernels.normal_log_prob`,
:func:`kernels.normal_kl_std`), never by the model, so the kernel backend choice
swaps what they run on. The prior is p(z) = N(0, I).

**The VAE objective.** With S samples z_s ~ q(z|x) the single-sample-bound
estimators estimate the gradient of the ELBO

    L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))          (kl="analytic")
         = E_q[log p(x|z) + log p(z) - log q(z|x)]        (kl="mc")

(Kingma & Welling 2014, eqs. 7 and 10). ``loss = -mean_b surrogate_b`` is the
scalar to minimise. The decoder's parameters always get the plain Monte Carlo
gradient ``mean_s grad_theta log p(x|z_s)`` (as in the M-step of EM: no trick is needed);
the estimator choice is about the encoder.

**Noise.** Every estimator consumes a standard-normal tensor of
:meth:`Estimator.noise_shape`, drawn from the shared Philox stream
(:func:`kernels.normal_noise`) for ``seed`` or passed in as ``eps`` (the harness
draws it once per step so all backends train on the same noise). Its leading dim
is always the sample dim; the remaining dims follow ``mu``'s shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch

import kernels

LIKELIHOODS = ("bernoulli", "gaussian")
KL_MODES = ("analytic", "mc")


# --------------------------------------------------------------------------- helpers
def attach(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value + (surrogate - surrogate.detach())``: the value of ``value``, the gradient of ``surrogate``."""
    return value.detach() + (surrogate - surrogate.detach())


def log_prior(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dim, through the kernel API: ``[..., D] -> [...]``."""
    zero = torch.zeros(1, dtype=z.dtype, device=z.device)
    return kernels.normal_log_prob(z, zero, zero)


def log_likelihood(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``log p(x|z)`` through the kernel API.

    Args:
        model: follows the model protocol (``decode``, ``likelihood``).
        x: ``[B, Dx]`` observations.
        z: ``[..., B, Dz]`` latents.

    Returns:
        ``[..., B]`` log-likelihoods.
    """
    out = model.decode(z)
    if model.likelihood == "bernoulli":
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"a Bernoulli model's decode(z) must return logits (a tensor), got {type(out).__name__}")
        return kernels.bernoulli_log_prob(x, out)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise TypeError(f"a Gaussian model's decode(z) must return (mean, logvar), got {type(out).__name__}")
    return kernels.normal_log_prob(x, out[0], out[1])


def check_model(model) -> None:
    """Raise a clear error if ``model`` does not follow the model protocol."""
    missing = [a for a in ("encode", "decode") if not callable(getattr(model, a, None))]
    if missing:
        raise TypeError(f"model must have methods encode(x) and decode(z); {type(model).__name__} lacks {missing}")
    lik = getattr(model, "likelihood", None)
    if lik not in LIKELIHOODS:
        raise ValueError(f"model.likelihood must be one of {list(LIKELIHOODS)}, got {lik!r}")


def check_x(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, Dx], got {type(x).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape [B, Dx], got {x.dtype} of shape {list(x.shape)}")
    return x


def check_gaussian(mu: object, logvar: object, where: str) -> None:
    for arg, t in (("mu", mu), ("logvar", logvar)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {arg} must be a torch.Tensor [..., D], got {type(t).__name__}")
        if not t.is_floating_point() or t.dim() == 0:
            raise ValueError(f"{where}: {arg} must be a floating tensor [..., D], got {t.dtype} {list(t.shape)}")
    if mu.shape != logvar.shape:
        raise ValueError(
            f"{where}: mu and logvar must have the same shape [..., D], got {list(mu.shape)} and {list(logvar.shape)}"
        )
    if mu.dtype != logvar.dtype or mu.device != logvar.device:
        raise ValueError(f"{where}: mu and logvar must share dtype and device, got {mu.dtype}/{logvar.dtype}")


def checked_f(f: Callable, mu_shape: torch.Size) -> Callable:
    """Wrap ``f`` so that a wrong output shape raises a clear error."""
    if not callable(f):
        raise TypeError(f"f must be callable z [S, *mu.shape] -> [S, *mu.shape[:-1]], got {type(f).__name__}")
    batch = tuple(mu_shape[:-1])

    def wrapped(z: torch.Tensor) -> torch.Tensor:
        out = f(z)
        want = (z.shape[0], *batch)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"f(z) for z of shape {list(z.shape)} must return shape {list(want)}, got {got}")
        return out

    return wrapped


# --------------------------------------------------------------------------- protocol
class Estimator:
    """Base class and protocol of the gradient estimators.

    Subclasses set ``name`` and implement :meth:`_expectation` (a Gaussian
    expectation, the single-sample-bound family) or override
    :meth:`_vae_objective` (the multi-sample bounds, ``vae_only = True``).
    The private methods take ``mu``/``logvar`` with arbitrary leading dims, so
    :func:`estimators.per_sample_grads` can run R replicates as one batch.

    Attributes:
        name: registry key.
        families: the latent families whose gradient it estimates (``"normal"``:
            q = N(mu, diag exp(logvar))); the harness and the contract tests read it.
        vae_only: the estimator needs the VAE structure (x, decoder); its
            :meth:`surrogate` raises ValueError.
        multi_sample: its objective is a K-sample bound (the importance-weighted
            bound of Burda et al. 2016), so training runs it with K > 1 samples
            (at K = 1 the bound is the ELBO).
        min_samples: smallest ``num_samples`` it accepts.
        default_kl: the KL mode of :meth:`vae_loss` when ``kl`` is None.
        kl_modes: the KL modes it accepts.
    """

    name: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ("normal",)
    vae_only: ClassVar[bool] = False
    multi_sample: ClassVar[bool] = False
    min_samples: ClassVar[int] = 1
    default_kl: ClassVar[str] = "analytic"
    kl_modes: ClassVar[tuple[str, ...]] = KL_MODES

    def __init__(self) -> None:
        self._frozen = 0

    # ------------------------------------------------------------ description
    @property
    def options(self) -> dict:
        """The options that configure this estimator (as results rows write them)."""
        return {}

    @property
    def label(self) -> str:
        """``name`` plus its non-default options, e.g. ``score_function[leave_one_out]``."""
        opts = ",".join(str(v) for v in self.options.values())
        return f"{self.name}[{opts}]" if opts else self.name

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"estimators.get({self.name!r}{', ' if opts else ''}{opts})"

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the estimator owns (a learned baseline's); updated by the estimator itself."""
        return []

    def state_dict(self) -> dict:
        """The state training changes (a control variate's), as tensors and plain types.

        What a checkpoint stores: ``torch.load(..., weights_only=True)`` reads it
        back, so loading a checkpoint never runs code.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{self.label} has no state, got keys {sorted(state)}")

    def noise_shape(self, num_samples: int, mu_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the standard-normal noise one estimate consumes: ``(S, *mu_shape)`` by default."""
        return (int(num_samples), *mu_shape)

    def evaluations(self, num_samples: int, dim: int) -> int:
        """Evaluations of f (decoder passes) per example for one estimate with ``num_samples`` samples."""
        return int(num_samples)

    # ------------------------------------------------------------ state
    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Inside, stateful control variates (moving average, learned) do not update."""
        self._frozen += 1
        try:
            yield
        finally:
            self._frozen -= 1

    @property
    def stateful(self) -> bool:
        """Whether the estimator carries state that training updates (a stateful control variate)."""
        return False

    @property
    def updates_state(self) -> bool:
        """Whether a call now may update state: not frozen and autograd enabled (not evaluation)."""
        return self._frozen == 0 and torch.is_grad_enabled()

    # ------------------------------------------------------------ validation
    def check_num_samples(self, num_samples: object) -> int:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        if num_samples < self.min_samples:
            raise ValueError(f"{self.label} needs num_samples >= {self.min_samples}, got {num_samples}")
        return num_samples

    def _noise(self, num_samples, mu, eps, seed) -> torch.Tensor:
        shape = self.noise_shape(num_samples, tuple(mu.shape))
        if eps is None:
            return kernels.normal_noise(shape, seed=seed, device=mu.device, dtype=mu.dtype)
        if not isinstance(eps, torch.Tensor):
            raise TypeError(f"eps must be a torch.Tensor of shape {list(shape)}, got {type(eps).__name__}")
        if tuple(eps.shape) != shape:
            raise ValueError(
                f"eps must have shape {list(shape)} for {self.label} with num_samples={num_samples} and "
                f"mu {list(mu.shape)} (see noise_shape()), got {list(eps.shape)}"
            )
        return eps.to(dtype=mu.dtype, device=mu.device)

    def resolve_kl(self, kl: object) -> str:
        if kl is None:
            return self.default_kl
        if kl not in self.kl_modes:
            if kl in KL_MODES:
                raise ValueError(
                    f"{self.label} needs kl in {list(self.kl_modes)} (its bound uses log q(z|x) of each sample), "
                    f"got {kl!r}"
                )
            raise ValueError(f"kl must be one of {list(KL_MODES)} or None (the estimator's default), got {kl!r}")
        return kl

    # ------------------------------------------------------------ public API
    def surrogate(
        self,
        f: Callable[[torch.Tensor], torch.Tensor],
        mu: torch.Tensor,
        logvar: torch.Tensor,
        num_samples: int = 1,
        *,
        eps: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Surrogate of ``F = E_{z ~ N(mu, diag exp(logvar))}[f(z)]``.

        Args:
            f: maps z ``[S', *mu.shape]`` to ``[S', *mu.shape[:-1]]`` (row-wise; S' may
                exceed ``num_samples`` for estimators that evaluate f at extra points).
                It may close over ``mu``, ``logvar`` and parameters: that direct path is
                part of the estimate.
            mu: ``[..., D]`` mean.
            logvar: ``[..., D]`` log variance.
            num_samples: S, samples per estimate.
            eps: optional noise of :meth:`noise_shape` ``(S, *mu.shape)``-like shape.
            seed: noise seed when ``eps`` is None (None draws one from torch's generator).

        Returns:
            ``[*mu.shape[:-1]]``: value = the Monte Carlo estimate of F; ``.sum().backward()``
            leaves the gradient estimate in ``mu.grad``, ``logvar.grad`` and f's parameters.
        """
        if self.vae_only:
            raise ValueError(
                f"{self.label} is defined for the VAE objective only (it needs x and the decoder); "
                "use vae_loss(model, x) or a Gaussian-expectation estimator "
                "(reparam, score_function, stl, measure_valued)"
            )
        check_gaussian(mu, logvar, f"{self.name}.surrogate")
        num_samples = self.check_num_samples(num_samples)
        eps = self._noise(num_samples, mu, eps, seed)
        return self._expectation(checked_f(f, mu.shape), mu, logvar, eps, None)

    def vae_loss(
        self,
        model,
        x: torch.Tensor,
        *,
        num_samples: int = 1,
        kl: str | None = None,
        eps: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE objective: ``(loss, elbo)``.

        Args:
            model: follows the model protocol (module docstring).
            x: ``[B, Dx]`` observations.
            num_samples: S (K for the multi-sample bounds).
            kl: ``"analytic"`` (closed-form KL through :func:`kernels.normal_kl_std`),
                ``"mc"`` (``log p(z) - log q(z|x)`` per sample) or None for the
                estimator's default (``default_kl``).
            eps: optional noise of shape :meth:`noise_shape` ``(S, B, Dz)``-like.
            seed: noise seed when ``eps`` is None.

        Returns:
            ``loss``: scalar ``-mean_b surrogate_b`` to minimise (its gradient is the
            estimate); ``elbo``: ``[B]`` the per-example Monte Carlo bound (detached).
        """
        check_model(model)
        x = check_x(x)
        kl = self.resolve_kl(kl)
        num_samples = self.check_num_samples(num_samples)
        mu, logvar = model.encode(x)
        check_gaussian(mu, logvar, f"{type(model).__name__}.encode(x)")
        if mu.dim() != 2 or mu.shape[0] != x.shape[0]:
            raise ValueError(f"model.encode(x) must return [B, Dz] with B = {x.shape[0]}, got {list(mu.shape)}")
        eps = self._noise(num_samples, mu, eps, seed)
        surr, value = self._vae_objective(model, x, mu, logvar, eps, kl)
        return -surr.mean(-1), value.detach()

    # ------------------------------------------------------------ to implement
    def _expectation(self, f, mu, logvar, eps, context) -> torch.Tensor:
        """Surrogate ``[*mu.shape[:-1]]`` of ``E_q[f]``; ``context`` is x in the VAE (or None)."""
        raise NotImplementedError

    def _log_q_params(self, mu, logvar):
        """The (mu, logvar) under which the Monte Carlo ``log q(z|x)`` of kl="mc" is evaluated."""
        return mu, logvar

    def _vae_objective(self, model, x, mu, logvar, eps, kl) -> tuple[torch.Tensor, torch.Tensor]:
        """``(surrogate [*mu.shape[:-1]], value [*mu.shape[:-1]])`` of the ELBO.

        ``mu``/``logvar`` may carry leading replicate dims ``[R, B, Dz]``; x ``[B, Dx]``
        broadcasts. The default treats the ELBO as ``E_q[f] (- KL)`` with
        ``f(z) = log p(x|z) (+ log p(z) - log q(z|x))`` and calls :meth:`_expectation`.
        """
        if kl == "mc":
            q_mu, q_logvar = self._log_q_params(mu, logvar)

            def f(z):
                return log_likelihood(model, x, z) + log_prior(z) - kernels.normal_log_prob(z, q_mu, q_logvar)

            surr = self._expectation(f, mu, logvar, eps, x)
        else:
            surr = self._expectation(lambda z: log_likelihood(model, x, z), mu, logvar, eps, x)
            surr = surr - kernels.normal_kl_std(mu, logvar)
        return surr, surr.detach()


def logmeanexp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(a), dim))`` computed stably."""
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])
