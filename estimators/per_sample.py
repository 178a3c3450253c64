"""Per-sample gradients: R independent estimates ``[R, *param.shape]``, batched.

The variance benchmark needs many independent gradient estimates. The noise of
all R replicates is one draw of :func:`replicate_noise` ``[R, *noise_shape]`` from
the shared stream for ``seed``: replicate r gets block r, i.e. the Philox
counters ``r N ... (r + 1) N - 1`` (N elements per estimate). Disjoint counters
give independent noise (never one shared draw, which would read as zero
variance), and one kernel call per chunk of replicates draws them, already laid
out as ``[S, chunk, ...]`` (:func:`kernels.normal_noise_blocks`); per-replicate
seeds would cost one kernel call per replicate, more than a whole batched
estimate of a small problem (see ``docs/per-sample-gradients.md``). Row r
equals the gradient of ``est.vae_loss(model, x, eps=noise[r])``
(:func:`per_sample_grads_loop` computes exactly that, one backward pass per
replicate, as the reference). The batched version runs the R replicates as one
batch, chunked over R to bound memory:

1. ``mu, logvar = encode(x)`` once; the R replicates see copies ``[R, B, Dz]``
   (leaves) and their stacked noise ``[S, R, ...]``; the estimator's objective
   runs once on the batch (decoders accept leading dims; every kernel call is an
   ordinary batched call, so any kernel backend works).
2. One ``torch.autograd.grad`` gives, per replicate, the gradient with respect
   to its ``mu``/``logvar`` copy and to each decoder output (the outputs are
   taken as differentiable taps; one that does not depend on z becomes a leaf).
3. Parameter gradients per replicate are vector-Jacobian products with those
   cotangents, vectorised over R with ``torch.func.vmap``: the encoder's VJP at x
   (its Jacobian is shared by all replicates), the decoder's at each replicate's z.
   A model may supply the decoder's in closed form, ``model.decoder_vjp(z,
   cotangents, rep_dim) -> {name: [R, *param.shape]}`` (the optional hook of the
   model protocol, :mod:`estimators.base`; ``NotImplemented`` declines it); the
   vmapped ``vjp`` recomputes the decoder's forward to build the parameters' graph.
   A model whose decoder parameters are all in linear layers can instead name
   them (``model.decoder_layers()``, tried first): forward hooks record each
   layer's input ``a`` and output while the objective runs, step 2 also takes
   the cotangent ``c`` at every layer output, and the gradients are
   ``dW_r = sum_n c_rn^T a_rn`` (one ``bmm``) and ``db_r = sum_n c_rn`` over
   replicate r's rows (Goodfellow 2015), with no second pass through the decoder.

Stateful control variates are frozen meanwhile (:meth:`Estimator.frozen`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

import kernels

from .base import Estimator, check_gaussian, check_model, check_x, checked_f

MEMORY_BUDGET = 1 << 26  # elements per chunk (256 MiB of float32) for the automatic chunk size


class _Method(nn.Module):
    """``forward`` calls ``model.<method>`` so that ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.m = model
        self.method = method

    def forward(self, *args):
        return getattr(self.m, self.method)(*args)


class _Recorder:
    """Model stand-in whose ``decode`` records ``(z, outputs, single, layer taps)``, the outputs made differentiable taps.

    With ``layers`` (``model.decoder_layers()``, checked by :func:`_decoder_layers`)
    a forward hook on each linear layer also records its input and output (the
    layer taps, :func:`_layer_grads`) during the call.
    """

    def __init__(
        self, dec_mod: _Method, params: dict[str, torch.Tensor], likelihood: str, layers: dict | None = None
    ) -> None:
        self.dec_mod, self.params, self.likelihood, self.layers = dec_mod, params, likelihood, layers
        self.calls: list[tuple[torch.Tensor, list[torch.Tensor], bool, list | None]] = []

    def decode(self, z):
        layer_taps: list | None = None
        handles = []
        if self.layers is not None:
            layer_taps = []
            for name, layer in self.layers.items():
                hook = _tap_hook(name, layer, layer_taps)
                handles.append(layer.module.register_forward_hook(hook, with_kwargs=True))
        try:
            out = functional_call(self.dec_mod, self.params, (z,))  # detached parameters: graph through z only
        finally:
            for h in handles:
                h.remove()
        single = isinstance(out, torch.Tensor)
        outs = (out,) if single else tuple(out)
        # The outputs themselves are the points whose gradients are taken (autograd.grad
        # accepts non-leaf tensors); one that does not depend on z (a fixed decoder
        # variance, often an expanded view) becomes a leaf sharing its memory. Adding a
        # zero probe instead would materialise every output (and the zeros) at full
        # size: a fifth of the ppca variance benchmark at S = 1000.
        taps = [o if o.requires_grad else o.detach().requires_grad_() for o in outs]
        if layer_taps is not None:
            for t in layer_taps:
                if t.a._version != t.a_version or t.out._version != t.out_version:
                    raise RuntimeError(
                        f"model.decoder_layers(): the input or output of layer {t.name!r} was modified in place "
                        "during decode; per-sample gradients from layer taps need them unchanged "
                        "(use out-of-place activations, or return NotImplemented from decoder_layers)"
                    )
        self.calls.append((z.detach(), taps, single, layer_taps))
        return taps[0] if single else tuple(taps)


class _Layer(NamedTuple):
    """A layer of ``model.decoder_layers()``: the module and the names its trainable weight and bias go by (or None)."""

    module: nn.Linear
    weight: str | None
    bias: str | None


class _Tap(NamedTuple):
    """One call of a tapped layer: its input ``a`` and output, their versions then, and the layer's names."""

    name: str
    weight: str | None
    bias: str | None
    a: torch.Tensor
    a_version: int
    out: torch.Tensor
    out_version: int


def _tap_hook(name: str, layer: _Layer, sink: list) -> Callable:
    """A forward hook (``with_kwargs``) recording a :class:`_Tap` per call of a linear layer.

    An output that does not depend on z (the first layer under a score-function
    estimator, whose z is detached) is replaced by a leaf, so the layers after it
    build the graph that carries the cotangents back to it.
    """

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"model.decoder_layers(): layer {name!r} was called without an input tensor")
        a = x.detach()
        out = output if output.requires_grad else output.detach().requires_grad_()
        sink.append(_Tap(name, layer.weight, layer.bias, a, a._version, out, out._version))
        return out

    return hook


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def _check_r(R: object) -> int:
    if isinstance(R, bool) or not isinstance(R, int) or R < 1:
        raise ValueError(f"R must be an int >= 1 (number of replicates), got {R!r}")
    return R


def _check_chunk(chunk_size: object, R: int, per_rep: int) -> int:
    if chunk_size is None:
        return max(1, min(R, MEMORY_BUDGET // max(per_rep, 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 or None (automatic), got {chunk_size!r}")
    return min(chunk_size, R)


def replicate_noise(
    est: Estimator,
    num_samples: int,
    mu_shape: tuple[int, ...],
    R: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The noise of R replicates: ``[R, *est.noise_shape(num_samples, mu_shape)]`` from the stream for ``seed``.

    Row r is replicate r's ``eps`` (Philox counters ``r N ... (r + 1) N - 1``).
    """
    shape = est.noise_shape(num_samples, tuple(mu_shape))
    return kernels.normal_noise((R, *shape), seed=seed, device=device, dtype=dtype)


def _chunk_noise(est: Estimator, num_samples: int, mu: torch.Tensor, rc: int, r0: int, seed: int) -> torch.Tensor:
    """Replicates ``r0 .. r0 + rc - 1`` of :func:`replicate_noise` as one batched call reads them.

    ``replicate_noise(...)[r0:r0 + rc].movedim(0, 1)``, drawn in that layout
    (:func:`kernels.normal_noise_blocks`): contiguous, so the kernels stream
    it (a moved view would make every row of z a jump to another replicate's
    noise, which slows the kernels down; see ``docs/per-sample-gradients.md``).
    """
    shape = est.noise_shape(num_samples, tuple(mu.shape))
    return kernels.normal_noise_blocks(rc, shape, seed=seed, first=r0, device=mu.device, dtype=mu.dtype)


@contextlib.contextmanager
def _parameters_kept(model: nn.Module) -> Iterator[None]:
    """Put every module's own parameters back as they were on exit.

    ``torch.func.functional_call`` swaps a model's parameters and restores them,
    but a module reachable by two paths (one layer in both the encoder and the
    decoder) is swapped twice and comes back holding the swapped-in tensor
    instead of its ``nn.Parameter`` (seen with torch 2.13): the model would
    silently stop training that layer.
    """
    saved = [(m, dict(m._parameters)) for m in model.modules()]
    try:
        yield
    finally:
        for m, params in saved:
            for k, v in params.items():
                if m._parameters.get(k) is not v:
                    m._parameters[k] = v


def _param_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """``(encoder's, decoder's)`` trainable parameter names; a parameter of both, or of neither, is in both.

    Membership is by identity (``model.encoder.parameters()``), not by name: a
    module placed in both the encoder and the decoder is listed once by
    ``named_parameters``, under one prefix, yet both use it.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    enc_mod, dec_mod = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if isinstance(enc_mod, nn.Module) and isinstance(dec_mod, nn.Module):
        in_enc = {id(p) for p in enc_mod.parameters()}
        in_dec = {id(p) for p in dec_mod.parameters()}
        enc = [n for n, p in named if id(p) in in_enc and id(p) not in in_dec]
        dec = [n for n, p in named if id(p) in in_dec and id(p) not in in_enc]
        rest = [n for n, _ in named if n not in enc and n not in dec]
        return enc + rest, dec + rest
    names = [n for n, _ in named]
    return names, names


def _check_est(est: object) -> Estimator:
    if not isinstance(est, Estimator):
        raise TypeError(f"est must be an estimator from estimators.get(...), got {type(est).__name__}")
    return est


def per_sample_grads(
    est: Estimator,
    model: nn.Module,
    x: torch.Tensor,
    R: int,
    *,
    num_samples: int = 1,
    seed: int = 0,
    kl: str | None = None,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """R independent gradient estimates of the VAE loss, batched over R.

    Args:
        est: an estimator (any of :func:`estimators.available`).
        model: an ``nn.Module`` following the model protocol (:mod:`estimators.base`).
        x: ``[B, Dx]`` observations (one fixed batch).
        R: number of replicates.
        num_samples: samples per estimate (S, or K for the multi-sample bounds).
        seed: noise seed; replicate r uses row r of :func:`replicate_noise`.
        kl: as :meth:`Estimator.vae_loss`.
        chunk_size: replicates per batch (None: as many as fit a 256 MiB working set).

    Returns:
        ``{name: [R, *param.shape]}`` for every trainable parameter of ``model``: row r is
        the gradient of ``est.vae_loss(model, x, num_samples=S, kl=kl, eps=noise[r])[0]`` (the
        loss to minimise) with ``noise = replicate_noise(est, S, (B, Dz), R, seed=seed)``.
    """
    est = _check_est(est)
    check_model(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, "latent", "normal") != "normal":
        # discrete latents: not batched over R yet; the loop gives the same rows
        return per_sample_grads_loop(est, model, x, R, num_samples=num_samples, seed=seed, kl=kl)
    x = check_x(x)
    R = _check_r(R)
    seed = check_seed(seed)
    kl = est.resolve_kl(kl)
    num_samples = est.check_num_samples(num_samples)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    enc_names, dec_names = _param_groups(model)
    enc_mod, dec_mod = _Method(model, "encode"), _Method(model, "decode")
    enc_params = {"m." + n: params[n] for n in enc_names}
    dec_params = {"m." + n: params[n] for n in dec_names}
    n_params = sum(p.numel() for p in params.values())
    hook = getattr(model, "decoder_vjp", None)
    hook = hook if callable(hook) else None
    dec_only = [n for n in dec_names if n not in enc_names]
    # layer taps need a split model whose decoder parameters are the decoder's alone
    layers = _decoder_layers(model, dec_only) if dec_only and len(dec_only) == len(dec_names) else None
    with torch.enable_grad(), est.frozen(), _parameters_kept(model):
        (mu, logvar), enc_vjp = vjp(lambda p: tuple(functional_call(enc_mod, p, (x,))), enc_params)
        check_gaussian(mu, logvar, f"{type(model).__name__}.encode(x)")
        mu, logvar = mu.detach(), logvar.detach()
        per_rep = 3 * n_params + 8 * est.evaluations(num_samples, mu.shape[-1]) * x.numel()
        chunk = _check_chunk(chunk_size, R, per_rep)
        out = {n: torch.zeros(R, *p.shape, dtype=p.dtype, device=p.device) for n, p in params.items()}
        rec_params = {k: v.detach() for k, v in dec_params.items()}
        for r0 in range(0, R, chunk):
            r1 = min(R, r0 + chunk)
            rc = r1 - r0
            eps = _chunk_noise(est, num_samples, mu, rc, r0, seed)  # [S', rc, *mu.shape(, channels)]
            mu_r = mu.unsqueeze(0).expand(rc, *mu.shape).clone().requires_grad_(True)
            lv_r = logvar.unsqueeze(0).expand(rc, *logvar.shape).clone().requires_grad_(True)
            rec = _Recorder(dec_mod, rec_params, model.likelihood, layers)
            surr, _ = est._vae_objective(rec, x, mu_r, lv_r, eps, kl)  # [rc, B]
            loss = -surr.mean(-1).sum()
            taps = [p for _, ps, _, _ in rec.calls for p in ps]
            lt = [t.out for _, _, _, lts in rec.calls for t in (lts or ())]
            grads = torch.autograd.grad(loss, [mu_r, lv_r, *taps, *lt], allow_unused=True)
            layer_cots = iter(grads[2 + len(taps) :])
            g_mu = torch.zeros_like(mu_r) if grads[0] is None else grads[0]
            g_lv = torch.zeros_like(lv_r) if grads[1] is None else grads[1]
            (enc,) = vmap(lambda a, b: enc_vjp((a, b)))(g_mu, g_lv)
            for name, g in enc.items():
                out[name[2:]][r0:r1] += g
            i = 2
            for z_in, ps, single, lts in rec.calls:
                cots = grads[i : i + len(ps)]
                i += len(ps)
                lcots = [next(layer_cots) for _ in lts or ()]
                rd = z_in.dim() - mu.dim() - 1  # position of the replicate dim: [..., R, B, Dz]
                got = None if lts is None else _layer_grads(lts, lcots, z_in, rd)
                if got is not None:
                    for name, g in got.items():
                        out[name][r0:r1] += g
                    continue
                if all(c is None for c in cots):
                    continue
                cots = tuple(torch.zeros_like(p) if c is None else c for c, p in zip(cots, ps, strict=True))
                got = None if hook is None else _hook_vjp(hook, z_in, cots, single, rd, params, rc)
                if got is not None:
                    for name, g in got.items():
                        out[name][r0:r1] += g
                    continue
                for name, g in _decoder_vjp(dec_mod, dec_params, z_in, cots, single, rd).items():
                    out[name[2:]][r0:r1] += g
    return out


def _decoder_layers(model: nn.Module, dec_names: list[str]) -> dict[str, _Layer] | None:
    """``model.decoder_layers()`` checked against the decoder's parameters; None when absent or declined.

    The hook of the model protocol (:mod:`estimators.base`) names linear layers
    whose weights and biases are every trainable decoder parameter, each used
    only through its layer's forward. ``dec_names``: the trainable parameters
    only the decoder uses. A parameter is known by the name ``named_parameters``
    gives it, found by identity, so weights tied across layers add up under one name.
    """
    fn = getattr(model, "decoder_layers", None)
    if not callable(fn) or not dec_names:
        return None
    layers = fn()
    if layers is NotImplemented:
        return None
    if not isinstance(layers, dict) or not all(
        isinstance(k, str) and isinstance(m, nn.Linear) for k, m in layers.items()
    ):
        raise TypeError(
            "model.decoder_layers() must return a dict submodule name -> nn.Linear, or NotImplemented; "
            f"got {type(layers).__name__} {layers!r:.200}"
        )
    canon = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    out: dict[str, _Layer] = {}
    for name, m in layers.items():
        try:
            found = model.get_submodule(name)
        except AttributeError:
            found = None
        if found is not m:
            raise ValueError(f"model.decoder_layers(): {name!r} is not the name of that layer in the model")
        out[name] = _Layer(m, canon.get(id(m.weight)), None if m.bias is None else canon.get(id(m.bias)))
    covered = {n for layer in out.values() for n in (layer.weight, layer.bias) if n is not None}
    missing = [n for n in dec_names if n not in covered]
    if missing:
        raise ValueError(
            f"model.decoder_layers() must cover every trainable decoder parameter; {missing} are not "
            f"weights or biases of the layers it returned ({sorted(layers)})"
        )
    return out


def _layer_grads(lts, lcots, z_in, rd) -> dict[str, torch.Tensor] | None:
    """Per-replicate gradients of linear layers from their taps: ``dW_r = sum_n c_rn^T a_rn``, ``db_r = sum_n c_rn``.

    ``lts``: the :class:`_Tap` of every layer call; ``lcots``: the loss's
    cotangent at each output (None: the output does not reach the loss). Rows
    ``n`` are all of a replicate's elements, the replicate being dim ``rd`` of
    ``z_in`` (Goodfellow 2015, "Efficient per-example gradient computations",
    arXiv:1510.01799). Calls of one layer, and layers sharing a weight, add up.
    None when a layer's leading dims are not z's sizes (a decoder that reshapes:
    the replicate dim is not known there), so the caller takes the generic path;
    that the dims are z's in z's order is the hook's promise (a decoder that
    permutes equal-sized leading dims is not detected).
    """
    lead = z_in.shape[:-1]
    if any(t.a.shape[:-1] != lead or t.out.shape[:-1] != lead for t in lts):
        return None
    R = lead[rd]
    out: dict[str, torch.Tensor] = {}

    def add(name, g):
        out[name] = out[name] + g if name in out else g

    for t, c in zip(lts, lcots, strict=True):
        if c is None:
            continue
        c = c.movedim(rd, 0).reshape(R, -1, t.out.shape[-1])  # [R, N, out]
        if t.weight is not None:
            add(t.weight, torch.bmm(c.transpose(1, 2), t.a.movedim(rd, 0).reshape(R, -1, t.a.shape[-1])))
        if t.bias is not None:
            add(t.bias, c.sum(1))
    return out


def _hook_vjp(hook, z_in, cots, single, rd, params, rc) -> dict[str, torch.Tensor] | None:
    """The model's own per-replicate decoder VJP (``model.decoder_vjp``), its result checked.

    None when the hook returns ``NotImplemented`` (it does not cover this model:
    the caller takes the generic vmap).
    """
    got = hook(z_in, cots[0] if single else cots, rd)
    if got is NotImplemented:
        return None
    if not isinstance(got, dict):
        raise TypeError(f"model.decoder_vjp must return a dict name -> [R, *param.shape], got {type(got).__name__}")
    for name, g in got.items():
        if name not in params:
            raise KeyError(f"model.decoder_vjp returned {name!r}, not a trainable parameter; known: {sorted(params)}")
        want = (rc, *params[name].shape)
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != want:
            raise ValueError(
                f"model.decoder_vjp()[{name!r}] must have shape {want} (replicates first), "
                f"got {getattr(g, 'shape', type(g).__name__)}"
            )
    return got


def _decoder_vjp(dec_mod, dec_params, z_in, cots, single, rd) -> dict[str, torch.Tensor]:
    def one(z, *c):
        _, fn = vjp(lambda p: functional_call(dec_mod, p, (z,)), dec_params)
        (g,) = fn(c[0] if single else tuple(c))
        return g

    return vmap(one, in_dims=(rd, *([rd] * len(cots))))(z_in, *cots)


def per_sample_grads_loop(
    est: Estimator,
    model: nn.Module,
    x: torch.Tensor,
    R: int,
    *,
    num_samples: int = 1,
    seed: int = 0,
    kl: str | None = None,
) -> dict[str, torch.Tensor]:
    """The reference of :func:`per_sample_grads`: R calls of ``vae_loss`` and R backward passes.

    Slow by design (the baseline of the per-sample-gradient benchmark); same
    output, same noise. For a discrete latent (``model.latent``) replicate r takes
    block r of :func:`kernels.uniform_noise` (``est.family_noise_shape``);
    :func:`per_sample_grads` runs this loop for them.
    """
    est = _check_est(est)
    R = _check_r(R)
    seed = check_seed(seed)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    rows: list[list[torch.Tensor]] = [[] for _ in names]
    with torch.no_grad():
        enc = model.encode(x)
    if getattr(model, "latent", "normal") == "normal":
        mu = enc[0]
        noise = replicate_noise(est, num_samples, tuple(mu.shape), R, seed=seed, dtype=mu.dtype, device=mu.device)
    else:  # uniforms of the discrete families, replicate r's block of the stream
        shape = est.family_noise_shape(num_samples, tuple(enc.shape))
        noise = kernels.uniform_noise((R, *shape), seed=seed, device=enc.device, dtype=enc.dtype)
    with torch.enable_grad(), est.frozen():
        for r in range(R):
            loss, _ = est.vae_loss(model, x, num_samples=num_samples, kl=kl, eps=noise[r])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for row, g, p in zip(rows, grads, params, strict=True):
                row.append(torch.zeros_like(p) if g is None else g)
    return {n: torch.stack(row) for n, row in zip(names, rows, strict=True)}


def per_sample_grads_expectation(
    est: Estimator,
    f: Callable[[torch.Tensor], torch.Tensor],
    mu: torch.Tensor,
    logvar: torch.Tensor,
    R: int,
    *,
    num_samples: int = 1,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """R independent estimates of ``grad E_{N(mu, diag exp(logvar))}[f]`` in (mu, logvar), batched.

    ``f`` must treat leading dims as batch dims: it receives z of shape
    ``[S', R_chunk, *mu.shape]`` and returns ``[S', R_chunk, *mu.shape[:-1]]``.
    Gradients with respect to parameters f closes over are not returned.

    Returns:
        ``{"mu": [R, *mu.shape], "logvar": [R, *mu.shape]}``; row r equals the gradient
        of ``est.surrogate(f, mu, logvar, num_samples, eps=noise[r]).sum()`` with
        ``noise = replicate_noise(est, num_samples, mu.shape, R, seed=seed)``.
    """
    est = _check_est(est)
    if est.vae_only:
        est.surrogate(f, mu, logvar, num_samples)  # raises the estimator's own error
    check_gaussian(mu, logvar, f"{est.name}.per_sample_grads_expectation")
    R = _check_r(R)
    seed = check_seed(seed)
    num_samples = est.check_num_samples(num_samples)
    mu, logvar = mu.detach(), logvar.detach()
    per_rep = 4 * est.evaluations(num_samples, mu.shape[-1]) * mu.numel()
    chunk = _check_chunk(chunk_size, R, per_rep)
    out = {"mu": torch.empty(R, *mu.shape, dtype=mu.dtype), "logvar": torch.empty(R, *mu.shape, dtype=mu.dtype)}
    with torch.enable_grad(), est.frozen():
        for r0 in range(0, R, chunk):
            r1 = min(R, r0 + chunk)
            rc = r1 - r0
            eps = _chunk_noise(est, num_samples, mu, rc, r0, seed)
            mu_r = mu.unsqueeze(0).expand(rc, *mu.shape).clone().requires_grad_(True)
            lv_r = logvar.unsqueeze(0).expand(rc, *mu.shape).clone().requires_grad_(True)
            surr = est._expectation(checked_f(f, mu_r.shape), mu_r, lv_r, eps, None)
            g = torch.autograd.grad(surr.sum(), [mu_r, lv_r], allow_unused=True)
            out["mu"][r0:r1] = 0.0 if g[0] is None else g[0]
            out["logvar"][r0:r1] = 0.0 if g[1] is None else g[1]
    return out
