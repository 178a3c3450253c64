"""Models of the harness: the MLP VAE and the linear-Gaussian VAE.

Both follow the estimators' model protocol (:mod:`estimators.base`):

* ``model.encode(x [B, D]) -> (mu [B, K], logvar [B, K])``: a diagonal Gaussian
  q(z|x) (Kingma & Welling 2014);
* ``model.decode(z [..., K]) -> logits [..., D]`` for a Bernoulli decoder, or
  ``-> (mean, logvar)`` for a Gaussian one;
* ``model.log_likelihood(x, decoded) -> [...]`` evaluates log p(x|z) through the
  kernel API (:func:`kernels.bernoulli_log_prob` / :func:`kernels.normal_log_prob`),
  so the selected kernel backend (``--backend``) runs it.

Parameter names start with ``encoder.`` or ``decoder.`` so the variance benchmark
splits gradients into the two groups by prefix.

The default MLP architectures follow Burda et al. (2016, IWAE): 784-200-200-50
with tanh for 28x28 data; the 8x8 digits get 64-128-128-16. The decoder's output
bias starts at the logit of the training mean, ``log(p / (1 - p))`` with ``p``
clamped to ``[1e-3, 1 - 1e-3]`` (ibid., appendix C).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

import kernels
from bench.problems.ppca import LinearGaussianVAE  # re-exported: the ppca model

__all__ = [
    "ACTIVATIONS",
    "LinearGaussianVAE",
    "MLPVAE",
    "ModelSpec",
    "available",
    "build_model",
    "default_architecture",
    "encoder_decoder_split",
    "register_model",
]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus, "gelu": nn.GELU}


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    """VAE with a Gaussian MLP encoder and a Bernoulli MLP decoder (logits).

    ``q(z|x) = N(mu(x), diag exp(logvar(x)))`` with ``[mu, logvar] = enc(x)`` (one
    linear head of width 2K); ``p(z) = N(0, I_K)``; ``p(x|z) = prod_d
    Bernoulli(x_d; sigmoid(l_d(z)))`` with logits ``l = dec(z)`` (Kingma & Welling 2014,
    appendix C.1; Burda et al. 2016, sec. 5).

    Args:
        x_dim: data dimension D.
        z_dim: latent dimension K.
        hidden: widths of the hidden layers (the decoder mirrors them).
        activation: one of :data:`ACTIVATIONS`.
        output_bias: ``[D]`` training-mean intensities; the decoder's last bias is set
            to their logit. None leaves torch's default initialisation.
    """

    likelihood = "bernoulli"

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        output_bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        for arg, v in (("x_dim", x_dim), ("z_dim", z_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPVAE: {arg} must be a positive int, got {v!r}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"MLPVAE: hidden must be positive ints, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLPVAE: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.x_dim, self.z_dim, self.hidden, self.activation = x_dim, z_dim, hidden, activation
        self.encoder = _mlp((x_dim, *hidden, 2 * z_dim), activation)
        self.decoder = _mlp((z_dim, *hidden[::-1], x_dim), activation)
        if output_bias is not None:
            p = torch.as_tensor(output_bias, dtype=torch.float32).reshape(-1)
            if p.numel() != x_dim:
                raise ValueError(f"MLPVAE: output_bias must have {x_dim} entries, got shape {tuple(p.shape)}")
            p = p.clamp(1e-3, 1 - 1e-3)
            with torch.no_grad():
                self.decoder[-1].bias.copy_(torch.log(p) - torch.log1p(-p))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, D] -> (mu [B, K], logvar [B, K])``."""
        h = self.encoder(x)
        return h[..., : self.z_dim], h[..., self.z_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [..., K] -> logits [..., D]`` of the Bernoulli decoder."""
        return self.decoder(z)

    def _plain_linear_decoder(self) -> bool:
        """``decode`` is this class's and every parametrised decoder layer is an ``nn.Linear``."""
        return type(self).decode is MLPVAE.decode and not any(
            not isinstance(m, nn.Linear) and any(True for _ in m.parameters()) for m in self.decoder
        )

    def decoder_layers(self) -> dict[str, nn.Linear]:
        """The decoder's linear layers by name: the optional layer-tap hook of the model protocol.

        :func:`estimators.per_sample_grads` then records each layer's input and
        output while the estimator's objective runs and takes the cotangents at
        the outputs in the same backward pass as everything else, so the
        per-replicate gradients cost one ``bmm`` per layer and no second pass
        through the decoder (:meth:`decoder_vjp` recomputes it). The activations
        are out of place, as the hook requires. ``NotImplemented`` when a
        subclass changed :meth:`decode` or gave the decoder other parametrised
        layers (as :meth:`decoder_vjp`).
        """
        if not self._plain_linear_decoder():
            return NotImplemented
        return {f"decoder.{i}": m for i, m in enumerate(self.decoder) if isinstance(m, nn.Linear)}

    def decoder_vjp(self, z: torch.Tensor, cotangent: torch.Tensor, rep_dim: int) -> dict[str, torch.Tensor]:
        """Per-replicate vector-Jacobian products of :meth:`decode` in the decoder's parameters.

        The optional hook of the model protocol that :func:`estimators.per_sample_grads`
        calls instead of ``torch.func.vmap`` over a ``vjp`` of ``decode`` (under vmap
        every layer's addmm becomes mm + add + copies, one small product per
        replicate; docs/per-sample-gradients.md has the measured difference). Here the replicates stay one batch: the decoder runs once
        on ``z`` laid out ``[R, N, K]`` (replicate r's N rows together), one
        autograd pass takes the cotangent at every linear layer's output, and each
        layer's per-replicate gradients are sums over the replicate's rows,
        ``dW_r = sum_n c_rn^T a_rn`` (one ``bmm`` over replicates) and
        ``db_r = sum_n c_rn``, with ``a`` the layer's input: the per-example
        gradient of a linear layer (Goodfellow 2015, "Efficient per-example
        gradient computations", arXiv:1510.01799).

        Args:
            z: ``[..., R, ..., K]`` latents, the R replicates along ``rep_dim``.
            cotangent: ``[..., D]``, broadcastable to ``decode(z)``.
            rep_dim: the replicate dim of ``z`` (a leading dim).

        Returns:
            ``{"decoder.<i>.weight": [R, out, in], "decoder.<i>.bias": [R, out]}`` for
            the trainable parameters of every linear layer; ``NotImplemented`` when a
            subclass changed :meth:`decode` or gave the decoder other parametrised
            layers (``per_sample_grads`` then takes the generic vmap).
        """
        layers = list(self.decoder)
        if not self._plain_linear_decoder():
            return NotImplemented
        R = z.shape[rep_dim]
        h = z.detach().movedim(rep_dim, 0).reshape(R, -1, z.shape[-1])  # [R, N, K]
        c = cotangent.expand(*z.shape[:-1], self.x_dim).movedim(rep_dim, 0).reshape(R, -1, self.x_dim)
        inputs, outputs = [], []
        with torch.enable_grad():
            for m in layers:
                if isinstance(m, nn.Linear):
                    inputs.append(h.detach())
                    h = nn.functional.linear(h, m.weight.detach(), None if m.bias is None else m.bias.detach())
                    if not h.requires_grad:  # the first layer: its output starts the graph
                        h.requires_grad_(True)
                    outputs.append(h)
                else:
                    h = m(h)
            cots = torch.autograd.grad(h, outputs, c)
        out: dict[str, torch.Tensor] = {}
        k = 0
        for i, m in enumerate(layers):
            if not isinstance(m, nn.Linear):
                continue
            a, g = inputs[k], cots[k]
            k += 1
            if m.weight.requires_grad:
                out[f"decoder.{i}.weight"] = torch.bmm(g.transpose(1, 2), a)
            if m.bias is not None and m.bias.requires_grad:
                out[f"decoder.{i}.bias"] = g.sum(1)
        return out

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``log p(x|z) = sum_d x_d l_d - softplus(l_d)`` ``[...]`` through the kernel API."""
        return kernels.bernoulli_log_prob(x, logits)

    def extra_repr(self) -> str:
        return f"{self.x_dim}-{'-'.join(map(str, self.hidden))}-{self.z_dim}, {self.activation}"


def default_architecture(x_dim: int) -> dict:
    """Default widths for data of dimension ``x_dim`` (Burda et al. 2016 for 28x28).

    Returns:
        ``{"hidden": (...), "z_dim": K, "activation": "tanh"}``: 200-200/50 for
        784-dim data, 128-128/16 for the 64-dim digits (and anything smaller).
    """
    if x_dim <= 256:
        return {"hidden": (128, 128), "z_dim": 16, "activation": "tanh"}
    return {"hidden": (200, 200), "z_dim": 50, "activation": "tanh"}


def _default_model(
    dataset,
    *,
    hidden: Sequence[int] | None = None,
    z_dim: int | None = None,
    activation: str | None = None,
    output_bias: bool = True,
) -> nn.Module:
    """Bernoulli data: an :class:`MLPVAE`; Gaussian data (``ppca``): the true-size linear-Gaussian VAE."""
    if dataset.likelihood == "gaussian":
        from bench.problems import ppca

        return ppca.model_for(dataset)
    arch = default_architecture(dataset.dim)
    return MLPVAE(
        dataset.dim,
        z_dim if z_dim is not None else arch["z_dim"],
        hidden=tuple(hidden) if hidden is not None else arch["hidden"],
        activation=activation or arch["activation"],
        output_bias=dataset.train_mean() if output_bias else None,
    )


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: registry key (``--model NAME``).
        builder: ``builder(dataset, **overrides) -> nn.Module`` following the model
            protocol; ``dataset`` is a :class:`bench.problems.datasets.Dataset`
            (use ``dataset.dim``, ``dataset.likelihood``, ``dataset.train_mean()``).
            The overrides a builder does not take are not passed.
        description: one line for ``--help`` and errors.
    """

    name: str
    builder: Callable[..., nn.Module]
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, builder: Callable[..., nn.Module], description: str = "", *, replace: bool = False):
    """Add a model under ``name`` (``elbobench train --model NAME``, ``TrainConfig(model=NAME)``).

    Raises:
        ValueError: the name is not an identifier or is taken (without ``replace``).
        TypeError: the builder is not callable.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"model name must be an identifier, got {name!r}")
    if not callable(builder):
        raise TypeError(f"model {name!r}: builder must be callable, got {type(builder).__name__}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"model {name!r} is already registered (pass replace=True to override)")
    _REGISTRY[name] = ModelSpec(name, builder, description)
    return builder


def available() -> list[str]:
    """Names of the registered models."""
    return list(_REGISTRY)


register_model("default", _default_model, "the dataset's default: MLP VAE (Burda et al. 2016 widths), linear for ppca")


def build_model(
    dataset,
    *,
    model: str = "default",
    hidden: Sequence[int] | None = None,
    z_dim: int | None = None,
    activation: str | None = None,
    seed: int = 0,
    output_bias: bool = True,
) -> nn.Module:
    """Model ``model`` of ``dataset`` (a :class:`bench.problems.datasets.Dataset`), seeded.

    The default model: Bernoulli data gets an :class:`MLPVAE` (defaults from
    :func:`default_architecture`, output bias from the training mean when
    ``output_bias``); Gaussian data (``ppca``) gets the :class:`LinearGaussianVAE`
    of :mod:`bench.problems.ppca` with the dataset's true latent size. The
    parameters are initialised under ``torch.manual_seed(seed)`` without touching
    the global generator's state.

    Raises:
        ValueError: ``model`` is not registered (the message lists those that are).
    """
    if not isinstance(model, str) or model not in _REGISTRY:
        raise ValueError(f"model must be one of {available()}, got {model!r}")
    builder = _REGISTRY[model].builder
    overrides = {"hidden": hidden, "z_dim": z_dim, "activation": activation, "output_bias": output_bias}
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        overrides = {k: v for k, v in overrides.items() if k in params}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return builder(dataset, **overrides)


def encoder_decoder_split(names: Sequence[str]) -> dict[str, list[str]]:
    """Group parameter names into ``{"encoder": [...], "decoder": [...]}`` by prefix.

    Names that start with neither (e.g. a decoder noise variance ``log_s2``) go to the
    decoder group, since they parameterise p(x|z).
    """
    enc = [n for n in names if n.startswith("encoder")]
    return {"encoder": enc, "decoder": [n for n in names if n not in enc]}


def param_count(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
