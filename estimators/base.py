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


def prior_of(model, q):
    """The prior p(b) of a discrete latent: ``model.prior_logits`` (fixed or learned) or uniform.

    Returns a family of q's kind with an attribute ``uniform`` (True without
    ``prior_logits``), broadcast to q's shape.
    """
    from .families import Bernoulli, Categorical

    logits = getattr(model, "prior_logits", None)
    uniform = logits is None
    if uniform:
        logits = torch.zeros((), dtype=q.dtype, device=q.device)
    elif not isinstance(logits, torch.Tensor):
        raise TypeError(f"model.prior_logits must be a tensor or None, got {type(logits).__name__}")
    try:
        logits = logits.expand(q.shape)
    except RuntimeError:
        raise ValueError(
            f"model.prior_logits of shape {list(logits.shape)} must broadcast to q's shape {list(q.shape)}"
        ) from None
    prior = Bernoulli(logits) if q.name == "bernoulli" else Categorical(logits)
    prior.uniform = uniform
    return prior


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


def checked_f(f: Callable, mu_shape: torch.Size, event_dims: int = 1) -> Callable:
    """Wrap ``f`` so that a wrong output shape raises a clear error.

    ``mu_shape`` is the shape of one latent sample, whose last ``event_dims`` dims
    are the latent's (2 for a categorical ``[..., D, K]``).
    """
    if not callable(f):
        raise TypeError(f"f must be callable z [S, *q.shape] -> [S, *q.batch_shape], got {type(f).__name__}")
    batch = tuple(mu_shape[: len(mu_shape) - event_dims])

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
        q,
        *args,
        num_samples: int | None = None,
        eps: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Surrogate of ``F = E_{z ~ q}[f(z)]``.

        Called as ``surrogate(f, q, num_samples=1, *, eps=None, seed=None)`` with a
        latent family ``q`` (:class:`estimators.Normal`, :class:`estimators.Bernoulli`,
        :class:`estimators.Categorical`; one of :attr:`families`), or as
        ``surrogate(f, mu, logvar, num_samples=1, ...)`` for ``q = Normal(mu, logvar)``.

        Args:
            f: maps z ``[S', *q.shape]`` to ``[S', *q.batch_shape]`` (row-wise; S' may
                exceed ``num_samples`` for estimators that evaluate f at extra points).
                It may close over q's tensors and parameters: that direct path is
                part of the estimate. Relaxed estimators (``gumbel_softmax``) evaluate
                f at continuous points, so f must accept real inputs.
            q: the latent family, or ``mu`` ``[..., D]`` followed by ``logvar``.
            num_samples: S, samples per estimate (pairs for ``arm`` and ``disarm``).
            eps: optional base noise of :meth:`family_noise_shape` (standard normals
                for Normal, uniforms in (0, 1) for the discrete families).
            seed: noise seed when ``eps`` is None (None draws one from torch's generator).

        Returns:
            ``[*q.batch_shape]``: value = the Monte Carlo estimate of F at samples of q;
            ``.sum().backward()`` leaves the gradient estimate in q's tensors and f's
            parameters.

        Raises:
            ValueError: q is of a family the estimator does not support (the message
                names the ones it does), or bad shapes.
        """
        q, num_samples = self._surrogate_args(q, args, num_samples)
        if q.name != "normal":
            return self._family_surrogate(f, q, num_samples, eps, seed)
        mu, logvar = q.mu, q.logvar
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

    def _surrogate_args(self, q, args, num_samples):
        """``(family, num_samples)`` from ``surrogate``'s positional forms (see its docstring)."""
        from .families import Family, Normal

        if isinstance(q, Family):
            if len(args) > 1:
                raise TypeError(f"surrogate(f, q, num_samples): got {len(args) + 2} positional arguments")
            if args:
                if num_samples is not None:
                    raise TypeError("surrogate(): num_samples given twice")
                num_samples = args[0]
        elif isinstance(q, torch.Tensor):
            check_gaussian(q, args[0] if args else None, f"{self.name}.surrogate")
            if len(args) > 2:
                raise TypeError(f"surrogate(f, mu, logvar, num_samples): got {len(args) + 2} positional arguments")
            if len(args) == 2:
                if num_samples is not None:
                    raise TypeError("surrogate(): num_samples given twice")
                num_samples = args[1]
            check_gaussian(q, args[0], f"{self.name}.surrogate")
            q = Normal(q, args[0])
        else:
            raise TypeError(
                f"{self.name}.surrogate: mu must be a torch.Tensor [..., D] followed by logvar, or q a latent "
                f"family (estimators.Normal, Bernoulli, Categorical), got {type(q).__name__}"
            )
        self.check_family(q.name)
        return q, 1 if num_samples is None else num_samples

    def check_family(self, family: str) -> None:
        """Raise a clear error unless the estimator supports latent family ``family``."""
        if family not in self.families:
            from .registry import available, estimator_class

            others = [n for n in available() if family in estimator_class(n).families]
            raise ValueError(
                f"{self.label} estimates gradients for the latent families {list(self.families)}, not {family!r} "
                f"(estimators for {family}: {others})"
            )

    def family_noise_shape(self, num_samples: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the uniform base noise of one estimate for a discrete family of sample shape ``shape``."""
        return (int(num_samples), *shape)

    def _family_noise(self, num_samples, q, eps, seed) -> torch.Tensor:
        shape = self.family_noise_shape(num_samples, tuple(q.shape))
        if eps is None:
            return kernels.uniform_noise(shape, seed=seed, device=q.device, dtype=q.dtype)
        if not isinstance(eps, torch.Tensor):
            raise TypeError(f"eps must be a torch.Tensor of uniforms of shape {list(shape)}, got {type(eps).__name__}")
        if tuple(eps.shape) != shape:
            raise ValueError(
                f"eps must have shape {list(shape)} for {self.label} with num_samples={num_samples} and "
                f"a {q.name} latent of shape {list(q.shape)} (see family_noise_shape()), got {list(eps.shape)}"
            )
        return eps.to(dtype=q.dtype, device=q.device)

    def _family_surrogate(self, f, q, num_samples, eps, seed) -> torch.Tensor:
        if self.vae_only:
            raise ValueError(f"{self.label} is defined for the VAE objective only (it needs x): use vae_loss(model, x)")
        num_samples = self.check_num_samples(num_samples)
        noise = self._family_noise(num_samples, q, eps, seed)
        return self._family_expectation(checked_f(f, q.shape, q.event_dims), q, noise, None)

    def _family_expectation(self, f, q, noise, context) -> torch.Tensor:
        """Surrogate ``[*q.batch_shape]`` of ``E_q[f]`` for a discrete family ``q`` from uniform ``noise``."""
        raise NotImplementedError(f"{self.label} does not implement the {q.name} family")

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
        latent = getattr(model, "latent", "normal")
        if latent != "normal":
            return self._family_vae_loss(model, x, latent, num_samples, kl, eps, seed)
        kl = self.resolve_kl(kl)
        num_samples = self.check_num_samples(num_samples)
        mu, logvar = model.encode(x)
        check_gaussian(mu, logvar, f"{type(model).__name__}.encode(x)")
        if mu.dim() != 2 or mu.shape[0] != x.shape[0]:
            raise ValueError(f"model.encode(x) must return [B, Dz] with B = {x.shape[0]}, got {list(mu.shape)}")
        eps = self._noise(num_samples, mu, eps, seed)
        surr, value = self._vae_objective(model, x, mu, logvar, eps, kl)
        return -surr.mean(-1), value.detach()

    def _family_vae_loss(self, model, x, latent, num_samples, kl, eps, seed):
        """``vae_loss`` for a discrete latent (``model.latent`` "bernoulli" or "categorical")."""
        from .families import FAMILIES, family_of

        if latent not in FAMILIES:
            raise ValueError(f"model.latent must be one of {list(FAMILIES)}, got {latent!r}")
        self.check_family(latent)
        if kl is None:
            kl = "mc"
        elif kl not in KL_MODES:
            raise ValueError(f"kl must be one of {list(KL_MODES)} or None (the Monte Carlo ELBO), got {kl!r}")
        num_samples = self.check_num_samples(num_samples)
        q = family_of(latent, model.encode(x))
        if q.dim_batch() != (x.shape[0],):
            raise ValueError(
                f"model.encode(x) must return logits of batch shape [{x.shape[0]}] (B = x.shape[0]), "
                f"got logits of shape {list(q.shape)}"
            )
        prior = prior_of(model, q)
        noise = self._family_noise(num_samples, q, eps, seed)
        surr, value = self._family_vae_objective(model, x, q, prior, noise, kl)
        return -surr.mean(-1), value.detach()

    def _family_vae_objective(self, model, x, q, prior, noise, kl):
        """``(surrogate [B], value [B])`` of the ELBO of a discrete latent.

        ``kl="mc"``: ``E_q[log p(x|b) + log p(b) - log q(b|x)]``, the Monte Carlo ELBO
        the discrete-latent papers use; ``kl="analytic"``: ``E_q[log p(x|b)] - KL(q || p)``.
        The decoder's parameters get the gradient of f at the samples f is evaluated at.
        """
        if kl == "mc":
            qd = q  # log q(b|x) differentiable in the logits: its direct gradient has mean 0

            def f(b):
                return log_likelihood(model, x, b) + prior.log_prob(b) - qd.log_prob(b)

            surr = self._family_expectation(f, q, noise, x)
        else:
            surr = self._family_expectation(lambda b: log_likelihood(model, x, b), q, noise, x) - q.kl(
                None if prior.uniform else prior
            )
        return surr, surr.detach()

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
