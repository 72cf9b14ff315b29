"""One mapping from failures to exit codes for every command (medfusion_jax/command.py)."""

from __future__ import annotations

import pytest

from medfusion_jax import command
from medfusion_jax.command import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CommandError
from medfusion_jax.data.errors import DataError


def _raise(err):
    def body():
        raise err
    return body


@pytest.mark.parametrize("err, code, message", [
    (CommandError("--steps must be positive"), EXIT_USAGE, "error: --steps must be positive"),
    (CommandError("loss is NaN at step 3", exit_code=EXIT_FAILED), EXIT_FAILED, "error: loss is NaN at step 3"),
    (ValueError("x.png: truncated"), EXIT_USAGE, "error: x.png: truncated"),
    (FileNotFoundError("runs/a: no such run"), EXIT_USAGE, "error: runs/a: no such run"),
    (DataError("airogs: labels.csv lacks the column 'class'"), EXIT_USAGE, "error: airogs: labels.csv lacks"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "demo: interrupted"),
])
def test_failures_become_one_line_and_an_exit_code(err, code, message, capsys):
    assert command.run(_raise(err), prog="demo") == code
    err_text = capsys.readouterr().err
    assert err_text.startswith(message) and "Traceback" not in err_text


def test_a_message_keeps_its_details(capsys):
    """Messages that list details (every mismatching key of a checkpoint) keep them below the first line."""
    assert command.run(_raise(ValueError("ckpt: does not match the model:\n  missing: in_conv.weight"))) == EXIT_USAGE
    assert capsys.readouterr().err == "error: ckpt: does not match the model:\n  missing: in_conv.weight\n"


def test_return_values_and_bugs():
    assert command.run(lambda: None) == 0
    assert command.run(lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        command.run(lambda: 1 / 0)


def test_traceback_switch(monkeypatch):
    monkeypatch.setenv(command.TRACEBACK, "1")
    with pytest.raises(ValueError, match="bad"):
        command.run(_raise(ValueError("bad")))


def test_every_command_goes_through_command_run():
    """The one helper: no command prints its own 'error:' lines or picks its own exit codes."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    mains = sorted((root / "eval").glob("*.py")) + sorted((root / "train").glob("*.py")) + [
        root / "medfusion_jax" / "convert" / "__main__.py", root / "medfusion_jax" / "data" / "__main__.py",
        root / "medfusion_jax" / "training" / "cli.py"]
    for path in mains:
        text = path.read_text()
        if "def main(" in text and "run_main(" not in text:
            assert "command.run(" in text, f"{path}: main does not use medfusion_jax.command.run"
        assert 'print(f"error:' not in text and 'print("error:' not in text, f"{path} prints its own errors"


def test_console_scripts_name_the_commands():
    """[project.scripts] entry points resolve to the same main() as the `python -m` forms."""
    import importlib
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert {"medfusion-train-autoencoder", "medfusion-train-diffusion", "medfusion-fid", "medfusion-sample",
            "medfusion-demo"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
