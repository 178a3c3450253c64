"""Compile flags and thresholds shared by the numba kernels.

``FASTMATH`` enables re-association, which is what LLVM needs to vectorize the
row sums (a float reduction is otherwise strictly sequential), and contraction
of ``a * b + c`` to FMA, which makes the polynomial ``exp``/``log`` of
:mod:`._math` markedly cheaper (see ``docs/numba-backend.md``). It keeps NaN
and inf semantics (no ``nnan``/``ninf``). Contraction rounds once where the
separate ops rounded twice, so results can differ from an uncontracted build by
an ulp; the accuracy tests of :mod:`._math` and the contract tests hold either way.
"""

FASTMATH = {"reassoc", "contract"}

# Below this many elements a kernel runs serially: waking numba's worker threads
# costs about what a serial pass over 128k float32 elements with an exp per
# element does. It also keeps the [129, 513] contract tests on the serial
# kernels, so the suite compiles the parallel variants only where it tests them.
PARALLEL_MIN_ELEMENTS = 1 << 17

# The Bernoulli kernels cost an exp and a log1p (forward) or an exp and a division
# (backward) per element, several times the Gaussian ones, so threads pay off
# sooner: at [128, 784] (batch 128 of the default VAE) the parallel kernels win,
# at [20, 784] (15,680 elements) serial and parallel tie, so the threshold sits
# just above it (docs/numba-backend.md).
PARALLEL_MIN_ELEMENTS_BERNOULLI = 1 << 14

# Up to this many elements the Bernoulli forward of a plain backward() also writes
# x - sigmoid(logits), and the backward is one torch multiply (logprob.py,
# _PlainBernoulliLogProb); above it the backward kernel runs as usual, because at
# large sizes the extra full-size buffer and torch's multiply cost more than they
# save (docs/numba-backend.md, with and without the output pool).
FUSED_GRAD_MAX_ELEMENTS = 1 << 21

# A broadcast log variance (one row, or a few rows read by many: the toys' and
# ppca's fixed variances, log q under mu [B, D] of z [S, B, D]) has its exp taken
# once over its own elements before the kernel runs, when the kernel processes at
# least PRECOMPUTE_MIN_ELEMENTS elements and PRECOMPUTE_RATIO times as many as the
# parameter holds; the kernel then reads exp(-logvar) or exp(logvar / 2) like any
# input instead of evaluating the polynomial per element, so the op is bound by
# memory, not by the polynomial (docs/numba-backend.md).
PRECOMPUTE_MIN_ELEMENTS = 1 << 15
PRECOMPUTE_RATIO = 4

# The gradient of an input broadcast over at least REDUCE_TASKS times its size
# (mu [B, D] of z [S, B, D]) is summed inside the backward kernel, into
# REDUCE_TASKS float64 partial sums (one per task, rows split evenly whatever the
# thread count, so the result does not depend on it) added at the end, instead of
# being written at full size and summed by torch afterwards (rows of at least
# SHORT_ROW), which saves a full-size write and read (docs/numba-backend.md).
REDUCE_TASKS = 8

# Row sums are accumulated in blocks of this many elements in the input dtype
# (vectorized lanes) and the block sums in float64. A row of at most BLOCK
# elements is one block, summed by one plain loop: the block loop's slicing costs
# about as much as 64 elements of work.
BLOCK = 256

# Options of every kernel: ``error_model="numpy"`` makes float division by zero
# give inf/nan instead of raising, which removes the check-and-raise branch that
# would otherwise stop LLVM from vectorizing any loop containing a division.
JIT_OPTIONS = dict(cache=True, fastmath=FASTMATH, error_model="numpy")
