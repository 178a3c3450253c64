"""Broadcast and strided inputs, read in place by the numba kernels (``kernels.numba_cpu._layout``).

Every backend is checked against the torch oracle on inputs laid out the ways a
VAE and the estimators produce them (parameters ``[B, D]`` against samples
``[S, B, D]``, ``[S, 1, D]`` against ``[S, B, D]``, one row against everything,
a column slice of a wider tensor, and a layout that does not collapse and falls
back to a copy), plus an upstream gradient that is an expanded scalar (what
``out.sum().backward()`` sends). The numba layout arithmetic has unit tests of
its own.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_contract import BACKENDS, OPS, make_arg, small_only

import kernels
from kernels import registry
from kernels.testing import assert_close_to_reference

# D = 6 runs the numba short-row (chunked) kernels, D = 40 the per-row ones (kernels.numba_cpu._layout.SHORT_ROW).
ROW_LENGTHS = [6, 40]


def layouts(D: int) -> dict:
    """name -> (shape of the full inputs, shape of the base tensor, base -> the view passed in)."""
    return {
        "leading": ((3, 4, D), (4, D), lambda t: t.expand(3, 4, D)),
        "middle": ((3, 4, D), (3, 1, D), lambda t: t.expand(3, 4, D)),
        "one_row": ((3, 4, D), (D,), lambda t: t.expand(3, 4, D)),
        "column_slice": ((5, D), (5, 2 * D + 1), lambda t: t[:, 1 : D + 1]),
        "no_collapse": ((2, 3, 4, D), (2, 1, 4, D), lambda t: t.expand(2, 3, 4, D)),
        "transposed_rows": ((4, 3, D), (3, 4, D), lambda t: t.transpose(0, 1)),
        "scalar_everywhere": ((3, 4, D), (1,), lambda t: t.expand(3, 4, D)),
        "row_constant": ((3, 4, D), (3, 1, 1), lambda t: t.expand(3, 4, D)),
    }


LAYOUTS = layouts(6)


def layout_inputs(op, layout, dtype, D, seed=0):
    """``(leaves, views)``: the first argument full and contiguous, the others views in ``layout``."""
    shape, base_shape, view = layouts(D)[layout]
    gen = torch.Generator().manual_seed(seed)
    leaves, views = [], []
    for i, name in enumerate(OPS[op]):
        kind = "x_bern" if (op == "bernoulli_log_prob" and i == 0) else name
        leaf = make_arg(kind, shape if i == 0 else base_shape, dtype, gen).requires_grad_()
        leaves.append(leaf)
        views.append(leaf if i == 0 else view(leaf))
    return leaves, views


def run_views(op, leaves, views, backend):
    """Outputs on the views and grads of the leaves under a random upstream gradient."""
    outs = getattr(kernels, op)(*views, backend=backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(1)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, ups)
    return tuple(o.detach() for o in outs), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("D", ROW_LENGTHS)
def test_views_match_reference(backend, op, layout, dtype, D):
    if backend != "numba" and D != ROW_LENGTHS[0]:
        pytest.skip("short and long rows run different kernels only in numba")
    leaves, views = layout_inputs(op, layout, dtype, D)
    assert all(v.is_contiguous() for v in views[:1]) and not views[1].is_contiguous()
    outs, grads = run_views(op, leaves, views, backend)
    ref_outs, ref_grads = run_views(op, leaves, views, "torch")
    assert_close_to_reference(outs, ref_outs, terms=D, msg=f"{op}[{backend}] {layout}")
    assert_close_to_reference(grads, ref_grads, terms=12, msg=f"{op}[{backend}] {layout} grads")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize(
    "S, B, Dl",
    [(64, 33, 65), (512, 33, 10), (13, 1100, 10)],
    ids=["rows", "short_rows_many_chunks", "short_rows_chunks_within_a_block"],
)
def test_broadcast_parameters_parallel_path(backend, op, S, B, Dl):
    """``[B, D]`` parameters against ``[S, B, D]`` samples above the serial threshold, grads summed over S.

    Sizes above kernels.numba_cpu's PARALLEL_MIN_ELEMENTS; with D = 10 the
    short-row kernels run over many chunks of rows, some gathered across blocks
    of B rows and some (B = 1100 > CHUNK_ROWS) read in place within one block.
    """
    if small_only(backend):
        pytest.skip(f"{backend} runs small shapes only (TEST_SHAPES_SMALL)")
    gen = torch.Generator().manual_seed(3)
    params = []
    for i, name in enumerate(OPS[op]):
        kind = "x_bern" if (op == "bernoulli_log_prob" and i == 0) else name
        shape = (S, B, Dl) if i == 0 else (B, Dl)
        params.append(make_arg(kind, shape, torch.float32, gen).requires_grad_())
    expanded = [params[0]] + [p.expand(S, B, Dl) for p in params[1:]]
    outs = kernels.__dict__[op](*expanded, backend=backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum(o.sum() for o in outs)  # upstream gradients are expanded ones
    grads = torch.autograd.grad(loss, params)
    with kernels.use_backend("torch"):
        ref = kernels.__dict__[op](*expanded)
    ref = ref if isinstance(ref, tuple) else (ref,)
    ref_grads = torch.autograd.grad(sum(o.sum() for o in ref), params)
    assert_close_to_reference(tuple(o.detach() for o in outs), tuple(o.detach() for o in ref), terms=Dl)
    assert_close_to_reference(grads, ref_grads, terms=S)


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend not available")
class TestNumbaLayout:
    def collapse(self, t):
        from kernels.numba_cpu._layout import collapse

        return collapse(t.shape, t.stride(), t.shape[-1])

    def test_contiguous_is_rows_of_d(self):
        assert self.collapse(torch.zeros(3, 4, 5)) == (12, 0, 5, 60)

    def test_leading_broadcast(self):
        assert self.collapse(torch.zeros(4, 5).expand(3, 4, 5)) == (4, 0, 5, 20)

    def test_middle_broadcast(self):
        assert self.collapse(torch.zeros(3, 1, 5).expand(3, 4, 5)) == (4, 5, 0, 15)

    def test_one_row_everywhere(self):
        assert self.collapse(torch.zeros(5).expand(2, 3, 4, 5)) == (24, 0, 0, 5)  # zero strides merge

    def test_column_slice(self):
        assert self.collapse(torch.zeros(7, 11)[:, 2:7]) == (7, 0, 11, 6 * 11 + 5)

    def test_transposed_last_dim_is_not_a_layout(self):
        assert self.collapse(torch.zeros(5, 4).t()) is None

    def test_three_leading_dims_that_do_not_merge(self):
        assert self.collapse(torch.zeros(2, 1, 4, 5).expand(2, 3, 4, 5)) is None

    def test_length_one_last_dim_any_stride(self):
        t = torch.zeros(6, 2)[:, :1]
        assert self.collapse(t) == (6, 0, 2, 11)

    def test_row_picks_the_right_elements(self):
        """The kernels' row arithmetic reproduces the view's rows, for every layout above."""
        from kernels.numba_cpu._layout import strided

        for name, (_, base_shape, view) in LAYOUTS.items():
            t = view(torch.randn(base_shape, dtype=torch.float64))
            D_ = t.shape[-1]
            R = t.numel() // D_
            a, (inner, so, si, _, _) = strided(t, R, D_)
            rows = t.reshape(R, D_)
            for r in range(R):
                base = (r // inner) * so + (r % inner) * si
                assert torch.equal(torch.from_numpy(a[base : base + D_]), rows[r]), (name, r)

    def test_magic_division_is_exact(self):
        """``(r * magic) >> shift == r // inner`` at the edges of every quotient, for r < 2**31, in uint64."""
        import random

        from kernels.numba_cpu._layout import MAX_ROWS, magic

        rng = random.Random(0)
        inners = list(range(1, 300)) + [rng.randrange(300, MAX_ROWS) for _ in range(300)] + [MAX_ROWS - 1, 1 << 30]
        for inner in inners:
            m, sh = magic(inner)
            assert (MAX_ROWS - 1) * m < 2**63  # fits the kernels' uint64 product with room to spare
            rs = {0, 1, MAX_ROWS - 1, MAX_ROWS - 2}
            for k in [1, 2, 3] + [rng.randrange(1, MAX_ROWS // inner + 1) for _ in range(20)]:
                rs.update(r for r in (k * inner - 1, k * inner, k * inner + 1) if 0 <= r < MAX_ROWS)
            for r in rs:
                assert (r * m) >> sh == r // inner, (inner, r)

    def test_scalar_broadcast_copies_one_row(self):
        """A scalar expanded to [S, R, B, D] (stride 0 in D too) is read as one row of D values."""
        from kernels.numba_cpu._layout import strided

        t = torch.tensor([0.25]).expand(50, 6, 7, 10)
        a, lay = strided(t, 50 * 6 * 7, 10)
        assert a.size == 10 and (a == 0.25).all() and lay[1:3] == (0, 0)

    def test_views_are_not_copied(self):
        """Broadcast views reach the kernel as arrays over the original storage (no copy)."""
        from kernels.numba_cpu._layout import strided

        base = torch.randn(4, 5)
        a, _ = strided(base.expand(100, 4, 5), 400, 5)
        assert a.size == 20 and a.ctypes.data == base.data_ptr()


def test_numba_runs_here():
    """Guard: numba is a hard dependency, so the numba layout tests above must have run, not skipped."""
    assert "numba" in BACKENDS, registry.unavailable_reason("numba", "cpu")


def test_broadcast_shapes_agrees_with_torch():
    """The API's plain-Python broadcast equals ``torch.broadcast_shapes``, and fails where it fails."""
    from kernels import _broadcast_shapes

    gen = torch.Generator().manual_seed(0)
    checked = failed = 0
    for _ in range(500):
        shapes = []
        for _ in range(int(torch.randint(2, 4, (1,), generator=gen))):
            nd = int(torch.randint(1, 5, (1,), generator=gen))
            shapes.append(torch.Size(int(v) for v in torch.randint(1, 4, (nd,), generator=gen)))
        try:
            expected = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            with pytest.raises(ValueError):
                _broadcast_shapes(shapes)
            failed += 1
            continue
        assert _broadcast_shapes(shapes) == expected, shapes
        checked += 1
    assert checked > 50 and failed > 50  # both branches exercised
