"""Glue shared by the numba ops: zero-copy views, serial/parallel choice, vmap folding.

The public API (:mod:`kernels`) hands every op tensors of one broadcast shape
``[..., D]``; here they become flat 1-D numpy views of detached tensors
(``Tensor.numpy()`` shares memory). Kernels see ``R`` rows of ``D`` elements:
outputs are contiguous, row ``r`` at ``[r * D, (r + 1) * D)``; inputs are read in
place through a row layout (:mod:`._layout`), so broadcast views such as mu
``[B, D]`` expanded against ``[S, B, D]`` are not copied.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch._C._functorch import is_functorch_wrapped_tensor
from torch._functorch.utils import unwrap_dead_wrappers

from ..philox import _fill_normal_parallel, _fill_normal_serial, split_seed
from ._flags import PARALLEL_MIN_ELEMENTS, PRECOMPUTE_MIN_ELEMENTS, PRECOMPUTE_RATIO, REDUCE_TASKS
from ._math import map_exp_scaled
from ._pool import POOL

_ZERO_KEY = (np.uint64(0), np.uint64(0))


def flat(t: torch.Tensor | None) -> np.ndarray | None:
    """Zero-copy 1-D numpy view of ``t`` (made contiguous and detached first); None stays None."""
    if t is None:
        return None
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    a = t.numpy()
    a.shape = (a.size,)  # a view, or an error (never a silent copy); cheaper than t.view(-1)
    return a


_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def output(shape, dtype: torch.dtype, given: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """``(tensor, flat numpy view)`` of a new contiguous output (or of ``given``, preallocated).

    A new output's buffer comes from the reuse pool (:mod:`._pool`), which hands a
    buffer out again only once no tensor or array refers to it.
    """
    if given is not None:
        return given, flat(given)
    shape = tuple(shape)
    a = POOL.take(math.prod(shape), _NP_DTYPES[dtype])
    return torch.from_numpy(a).view(shape), a


def outputs(shape, dtype: torch.dtype, wanted, given=None) -> tuple[tuple, tuple]:
    """New outputs (or ``given[i]``) where ``wanted[i]``, else None: ``(tensors, flat numpy views)``."""
    ts, arrays = [], []
    for i, flag in enumerate(wanted):
        if not flag:
            ts.append(None)
            arrays.append(None)
        else:
            t, a = output(shape, dtype, None if given is None else given[i])
            ts.append(t)
            arrays.append(a)
    return tuple(ts), tuple(arrays)


def summable(t: torch.Tensor | None, a: np.ndarray | None, n: int) -> bool:
    """Whether the gradient of input ``t``, read by a kernel of ``n`` elements through ``a``, is summed there.

    ``t`` must be broadcast over at least REDUCE_TASKS times its size (the
    accumulators hold REDUCE_TASKS copies of it), contiguous, and read in place
    (``a``, from :func:`._layout.strided`, is its own data), so that the
    accumulator's layout is the input's.
    """
    return (
        t is not None
        and a is not None
        and n >= PRECOMPUTE_MIN_ELEMENTS
        and t.numel() * REDUCE_TASKS <= n
        and t.is_contiguous()
        and a.shape[0] == t.numel()
        and a.ctypes.data == t.data_ptr()
    )


def grad_outputs(shape, dtype: torch.dtype, wanted, inputs=None, arrays=None) -> tuple[list, tuple]:
    """Gradient outputs of a rows backward kernel: ``(results, kernel arrays)``.

    As :func:`outputs`, except that the gradient of an input that is
    :func:`summable` is summed in the kernel (see :mod:`._flags`): its kernel array
    is a zeroed float64 ``[REDUCE_TASKS, numel]`` accumulator (float64 so that the
    sums of thousands of float32 terms stay accurate), and its result entry is that
    array until :func:`finish_grads`.
    """
    n = math.prod(shape)
    res, outs = [], []
    for i, flag in enumerate(wanted):
        t = None if inputs is None else inputs[i]
        a = None if arrays is None else arrays[i]
        if not flag:
            res.append(None)
            outs.append(None)
        elif summable(t, a, n):
            acc = np.zeros((REDUCE_TASKS, t.numel()), np.float64)
            res.append(acc)
            outs.append(acc)
        else:
            g, ga = output(shape, dtype)
            res.append(g)
            outs.append(ga)
    return res, tuple(outs)


def finish_grads(res, inputs) -> tuple:
    """The gradients of :func:`grad_outputs`: accumulators summed over their tasks, in the input's shape and dtype."""
    return tuple(
        torch.from_numpy(r.sum(0)).to(t.dtype).view(t.shape) if isinstance(r, np.ndarray) else r
        for r, t in zip(res, inputs, strict=True)
    )


def reduce_to(g: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """A gradient of the broadcast shape summed to an input's ``shape`` (torch's rule for broadcast inputs)."""
    if g is None or g.shape == shape:
        return g
    if g.numel() == math.prod(shape):
        return g.view(shape)  # only size-1 dims differ
    return g.sum_to_size(shape)


def exp_of_broadcast(a: np.ndarray | None, n: int, scale: float) -> np.ndarray | None:
    """``exp(scale * a)`` over the array ``a`` of a broadcast input, or None to evaluate it per element.

    ``a`` is the 1-D array a kernel reads an input through (:func:`._layout.strided`);
    when it holds far fewer elements than the ``n`` the kernel processes (a
    parameter broadcast over samples), its exp is taken once here and the kernel
    reads the result through the same layout (see :mod:`._flags`).
    """
    if a is None or n < PRECOMPUTE_MIN_ELEMENTS or a.shape[0] * PRECOMPUTE_RATIO > n:
        return None
    out = np.empty_like(a)
    map_exp_scaled(a, scale, out)
    return out


def expand_to(shape, *tensors):
    """``tensors`` expanded to ``shape`` (None, and tensors already of that shape, unchanged)."""
    if shape is None:
        return tensors
    return tuple(t if t is None or t.shape == shape else t.expand(shape) for t in tensors)


def rows(shape: torch.Size) -> tuple[int, int]:
    """``(R, D)``: number of rows and row length of a ``[..., D]`` shape."""
    return math.prod(shape[:-1]), shape[-1]


def use_parallel(numel: int, min_elements: int = PARALLEL_MIN_ELEMENTS) -> bool:
    """Parallel kernels only pay off above ``min_elements`` (see :mod:`._flags`) and with >1 thread."""
    return numel >= min_elements and numba.get_num_threads() > 1


def keys(seed: int | None) -> tuple[np.uint64, np.uint64]:
    """Philox key words of ``seed`` (zeros when the kernel does not draw noise)."""
    return _ZERO_KEY if seed is None else split_seed(seed)


def noise(shape, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """The shared Philox stream (``kernels.philox``) for ``seed`` as a new CPU tensor.

    Filled as a numpy array and wrapped after (``torch.from_numpy``), so it also
    works under ``torch.func`` transforms, where ``torch.empty`` returns a tensor
    without storage that numba could not write.
    """
    shape = tuple(shape)
    buf = POOL.take(math.prod(shape), np.float32 if dtype == torch.float32 else np.float64)
    if buf.size:
        k0, k1 = split_seed(seed)
        fill = _fill_normal_parallel if use_parallel(buf.size) else _fill_normal_serial
        fill(buf, k0, k1)
    return torch.from_numpy(buf).reshape(shape)


def saved_key(*tensors: torch.Tensor | None) -> tuple:
    """``(data_ptr, shape, stride)`` of each tensor (None for None): where and how it lies in memory.

    The plain Functions keep the arrays (or, for small calls, the addresses) their
    forward read, for their backward. Saved-tensor hooks
    (``torch.autograd.graph.saved_tensors_hooks``, ``save_on_cpu``, non-reentrant
    checkpointing) can give the backward other tensors than the forward read: a
    copy, while the original is changed in place or freed. When the keys of the
    forward's inputs and of ``ctx.saved_tensors`` are equal, those tensors lie where
    and as the forward read them, so what it kept reads them; otherwise the backward
    rebuilds it from the saved tensors.
    """
    return tuple(None if t is None else (t.data_ptr(), t.shape, t.stride()) for t in tensors)


#: :func:`route` results.
NO_GRAD, PLAIN, TRANSFORM = 0, 1, 2


def route(*tensors: torch.Tensor | None) -> int:
    """Which path a call takes, in one pass over its inputs.

    * ``TRANSFORM``: a ``torch.func`` transform is active or wraps an input; the
      transform-aware Function (``setup_context``, ``vmap`` rule) must run, and under
      a transform even ``torch.empty`` returns a wrapped tensor numba cannot write;
    * ``PLAIN``: grad mode is on and an input requires grad: the lean legacy-style
      Function of the op (see :func:`plain_apply`);
    * ``NO_GRAD``: call the kernel launcher directly, no autograd bookkeeping.
    """
    if torch._C._are_functorch_transforms_active():
        return TRANSFORM
    grad = False
    for t in tensors:
        if t is not None:
            if is_functorch_wrapped_tensor(t):
                return TRANSFORM
            grad = grad or t.requires_grad
    return PLAIN if grad and torch.is_grad_enabled() else NO_GRAD


def plain_apply(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)`` for a legacy-style Function once :func:`route` said ``PLAIN``.

    ``Function.apply``'s Python wrapper only re-checks for transforms and dead
    functorch wrappers, which :func:`route` has ruled out; this goes to the C++
    ``_FunctionBase.apply`` directly (the same call it ends in).
    """
    return super(torch.autograd.Function, fn).apply(*args)


def apply(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)`` without its per-call ``inspect.signature``.

    ``Function.apply`` binds the arguments to ``fn.forward``'s signature (to fill
    in defaults) before anything else, which costs more than a small kernel,
    several times a training step. Every call here passes all of ``forward``'s arguments
    positionally, so that binding is the identity; outside ``torch.func``
    transforms this takes the same path as ``Function.apply`` after it
    (``_FunctionBase.apply`` on the unwrapped arguments), and under a transform
    it calls ``fn.apply`` itself.
    """
    if torch._C._are_functorch_transforms_active():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*unwrap_dead_wrappers(args))


def apply_backward(fn: type[torch.autograd.Function], *args):
    """Run a fused-backward Function from inside an op's ``backward``.

    The backward kernels are Functions of their own so that ``torch.func``
    transforms (``grad``, ``vmap(grad(...))``) and double-backward requests see
    their rules. A plain ``loss.backward()`` needs neither: grad mode is off
    inside ``backward`` and no transform is active, so the kernel launcher
    (``fn.forward``) is called directly, saving a Function node per op, which
    matters at the small batches of VAE training.
    """
    if not torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
        return fn.forward(*args)
    return apply(fn, *args)


def fold_vmap(fn, info, in_dims, args, noise_args=None):
    """The ``vmap`` rule of a row-wise op: fold the vmapped dim into the leading dims.

    The ops act on rows of the last dim, so a batch of ``B`` calls on ``[..., D]``
    is one call on ``[B, ..., D]``: move each batched input's vmapped dim to the
    front, expand unbatched inputs, call ``fn`` once, and return outputs batched
    at dim 0.

    Args:
        fn: the ``autograd.Function`` to call on the folded inputs.
        info: functorch's vmap info (``info.batch_size``).
        in_dims: the vmapped dim of each argument (None when unbatched).
        args: the arguments of ``fn.apply``.
        noise_args: optional ``(eps_pos, seed_pos, like_pos)``: when ``args[eps_pos]``
            is None the kernel would draw Philox noise by its index in the folded
            tensor; to keep one sample's stream (indexed within one call) it is
            materialised here with the shape of one call and broadcast.

    Returns:
        ``(outputs, out_dims)`` as functorch expects.
    """
    batch = info.batch_size
    args = list(args)
    if noise_args is not None:
        eps_pos, seed_pos, like_pos = noise_args
        if args[eps_pos] is None and args[seed_pos] is not None:
            like, dim = args[like_pos], in_dims[like_pos]
            shape = list(like.shape)
            if dim is not None:
                del shape[dim]
            args[eps_pos] = noise(shape, args[seed_pos], like.dtype)
            in_dims = list(in_dims)
            in_dims[eps_pos] = None
    folded = []
    for a, d in zip(args, in_dims, strict=True):
        if isinstance(a, torch.Tensor):
            a = a.movedim(d, 0) if d is not None else a.unsqueeze(0).expand(batch, *a.shape)
        folded.append(a)
    out = fn.apply(*folded)
    if isinstance(out, tuple):
        return out, tuple(0 if isinstance(o, torch.Tensor) else None for o in out)
    return out, 0
