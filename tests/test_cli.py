"""The ``elbobench`` entry point: help with examples, unknown commands, backends listing."""

import json
import subprocess
import sys

from bench import cli


def test_help_lists_commands_and_examples(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out
    assert "examples:" in out and "elbobench run --quick" in out


def test_unknown_command_fails_with_the_list(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "backends" in err


def test_backends_lists_every_registered_backend(capsys):
    import kernels

    assert cli.main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["backend"] for r in rows}
    assert names == set(kernels.registry.names())
    torch_cpu = next(r for r in rows if r["backend"] == "torch" and r["device"] == "cpu")
    assert torch_cpu["available"] is True
    for r in rows:
        assert r["available"] or r["reason"], r  # unavailable rows say why


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "bench.cli", "backends"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "torch" in out and "auto on cpu" in out
