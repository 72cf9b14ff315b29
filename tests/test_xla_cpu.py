"""The XLA:CPU setting: applied by the command lines, decided by the jaxlib version (medfusion_jax/xla_cpu.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medfusion_jax.xla_cpu import (
    FLAG,
    MEASURED_JAXLIB,
    OPT_OUT,
    SETTING,
    apply_cpu_defaults,
    jaxlib_version,
    setting_applies,
)

MEASURED = MEASURED_JAXLIB[0]


def test_flag_is_appended_to_existing_flags():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert apply_cpu_defaults(environ, version=MEASURED) is True
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {SETTING}"
    assert apply_cpu_defaults(environ, version=MEASURED) is False  # idempotent: never appended twice
    assert environ["XLA_FLAGS"].count(FLAG) == 1


def test_user_setting_and_opt_out_win():
    mine = {"XLA_FLAGS": f"--{FLAG}=dot"}
    assert apply_cpu_defaults(mine, version=MEASURED) is False and mine["XLA_FLAGS"] == f"--{FLAG}=dot"
    opted_out = {OPT_OUT: "0"}
    assert apply_cpu_defaults(opted_out, version=MEASURED) is False and "XLA_FLAGS" not in opted_out


@pytest.mark.parametrize("version, applies", [
    ((0, 10, 0), True), ((0, 10, 2), True), ((0, 9, 2), False), ((0, 11, 0), False), ((0, 12, 0, 1), False),
])
def test_only_measured_jaxlib_releases_get_the_setting(version, applies):
    environ: dict = {}
    assert setting_applies(version) is applies
    assert apply_cpu_defaults(environ, version=version) is applies
    assert ("XLA_FLAGS" in environ) is applies


def test_no_jaxlib_no_setting():
    assert setting_applies(None) is False


def test_installed_jaxlib_version_is_read():
    import jaxlib.version

    assert jaxlib_version()[:3] == tuple(int(p) for p in jaxlib.version.__version__.split(".")[:3])


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_importing_the_package_has_no_side_effect():
    out = _run("import os, medfusion_jax, medfusion_jax.models, medfusion_jax.training.loop;"
               "print(repr(os.environ.get('XLA_FLAGS')))")
    assert out.stdout.strip() == "None"


def test_a_command_sets_the_flag_and_xla_accepts_it():
    """XLA aborts the process on a flag it cannot parse: run a real computation inside command.run."""
    code = ("import os, jax, jax.numpy as jnp\n"
            "from medfusion_jax import command\n"
            "def body():\n"
            "    y = jax.lax.conv_general_dilated(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5)), (1, 1), 'SAME',\n"
            "                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
            "    print(float(y.sum())); print(os.environ.get('XLA_FLAGS', ''))\n"
            "raise SystemExit(command.run(body))\n")
    total, flags = _run(code).stdout.split("\n")[:2]
    # Each output pixel sums 2 channels over its in-image 3x3 neighbours: (2+3+3+2)^2 = 100 neighbours
    # over the 16 pixels of a 4x4 image, for each of 5 output channels.
    assert float(total) == 2 * 100 * 5
    assert flags.strip() == (SETTING if setting_applies(jaxlib_version()) else "")
