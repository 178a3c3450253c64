"""Compile flags and thresholds shared by the numba kernels.

``FASTMATH`` enables only re-association, which is what LLVM needs to vectorize
the row sums (a float reduction is otherwise strictly sequential); it keeps NaN
and inf semantics (no ``nnan``/``ninf``) and does not contract to FMA.
"""

FASTMATH = {"reassoc"}

# Below this many elements a kernel runs serially: waking numba's worker threads
# (tens of us on a busy 2-core machine) costs about what a serial pass over 128k
# float32 elements with an exp per element does (a bare Function.apply + numba
# dispatch is ~15 us). It also keeps the [129, 513] contract tests on the serial
# kernels, so the suite compiles the parallel variants only where it tests them.
PARALLEL_MIN_ELEMENTS = 1 << 17

# Row sums are accumulated in blocks of this many elements in the input dtype
# (vectorized lanes) and the block sums in float64.
BLOCK = 256

# Options of every kernel: ``error_model="numpy"`` makes float division by zero
# give inf/nan instead of raising, which removes the check-and-raise branch that
# would otherwise stop LLVM from vectorizing any loop containing a division.
JIT_OPTIONS = dict(cache=True, fastmath=FASTMATH, error_model="numpy")
