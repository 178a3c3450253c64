"""The vector width numba compiles for (:mod:`kernels._numba_target`), each case in a fresh process.

numba fixes its target when the first function is decorated, so every case runs
``import kernels`` in a new interpreter and reports what it got; the probe
function compiled there is a tiny float32 loop, whose assembly shows whether
512-bit (``zmm``) registers were used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import llvmlite.binding as ll
import pytest

from kernels import _numba_target

HAS_AVX512 = bool(ll.get_host_cpu_features().get("avx512f", False))

PROBE = """
import json, re, sys
if sys.argv[1] == "numba-first":
    import numba
    numba.njit(lambda a: a)  # a dispatcher made before kernels: numba's target is now fixed
import numpy as np
import numba
import kernels
from kernels import _numba_target as t

@numba.njit(fastmath=True)
def twice(x, y):
    for i in range(x.size):
        y[i] = x[i] * np.float32(2.0) + np.float32(1.0)

x = np.ones(4096, np.float32)
twice(x, np.empty_like(x))
asm = twice.inspect_asm(twice.signatures[0])
print(json.dumps({"state": t.configure(), "described": t.describe(), "wide": t.wide_vectors(), "zmm": "zmm" in asm}))
"""


def _probe(env_extra: dict, mode: str = "plain") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", _numba_target.ENV)}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["stderr"] = out.stderr
    return got


def _numba_default_zmm() -> bool:
    """Whether numba's own choice for this host (the features as LLVM reads them, no tuning change) uses zmm."""
    return _probe({"NUMBA_CPU_FEATURES": ll.get_host_cpu_features().flatten()})["zmm"]


def test_default_uses_512_bit_vectors_where_the_host_has_avx512():
    got = _probe({})
    assert got["described"] == got["state"]
    if HAS_AVX512:
        assert got["state"] == "512-bit vectors (AVX-512)" and got["wide"] and got["zmm"]
    else:
        assert got["state"] == "numba's default vectors (no AVX-512 here)" and not got["wide"] and not got["zmm"]


def test_256_means_256_bit_vectors():
    got = _probe({_numba_target.ENV: "256"})
    assert not got["wide"] and not got["zmm"] and got["described"] == got["state"]
    if HAS_AVX512:  # +prefer-256-bit, whatever LLVM's tuning for this CPU would pick
        assert got["state"] == f"256-bit vectors ({_numba_target.ENV}=256)"


def test_the_users_numba_target_is_left_alone():
    got = _probe({"NUMBA_CPU_FEATURES": ll.get_host_cpu_features().flatten()})
    assert got["state"] == "numba's target as the user set it (NUMBA_CPU_NAME/NUMBA_CPU_FEATURES)"
    assert not got["wide"]


@pytest.mark.skipif(not HAS_AVX512, reason="only an AVX-512 host would change the width")
def test_too_late_when_numba_compiled_first():
    got = _probe({}, mode="numba-first")
    assert got["state"] == "numba's default vectors (a numba function was decorated before kernels was imported)"
    assert not got["wide"] and got["zmm"] == _numba_default_zmm()


def test_an_unknown_value_warns_and_import_still_works():
    got = _probe({_numba_target.ENV: "512"})
    assert f"{_numba_target.ENV} must be one of ['auto', '256'], got '512'; using 'auto'" in got["stderr"]
    assert got["state"] == _probe({})["state"]  # treated as auto


def test_describe_says_when_the_setting_did_not_reach_the_codegen(monkeypatch):
    from numba.core import registry

    features = registry.cpu_target.target_context.codegen()._tm_features
    # claim the width this process's codegen was not told to use
    claim = "512-bit" if "+prefer-256-bit" in features else "256-bit"
    monkeypatch.setattr(_numba_target, "_state", f"{claim} vectors (claimed)")
    assert _numba_target.describe() == f"numba's default vectors (the {claim} setting did not reach numba's codegen)"


@pytest.mark.parametrize("value", ["auto", "AUTO", " 256 ", ""])
def test_accepted_values(monkeypatch, value):
    monkeypatch.setenv(_numba_target.ENV, value)
    assert _numba_target.requested() in _numba_target.CHOICES


@pytest.mark.parametrize("value", ["512", "wide", "128"])
def test_a_bad_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(_numba_target.ENV, value)
    with pytest.raises(ValueError, match=rf"{_numba_target.ENV} must be one of \['auto', '256'\], got '{value}'"):
        _numba_target.requested()


def test_this_process_reports_what_it_compiles_for():
    """The suite's own process: the description ``elbobench backends`` shows matches the codegen."""
    state = _numba_target.configure()
    assert _numba_target.wide_vectors() == (state == "512-bit vectors (AVX-512)")
