"""XLA:CPU defaults applied at import (medfusion_jax/xla_cpu.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from medfusion_jax.xla_cpu import FLAG, OPT_OUT, SETTING, apply_cpu_defaults, jaxlib_knows_flag


def test_flag_is_appended_to_existing_flags():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert apply_cpu_defaults(environ) is jaxlib_knows_flag()
    if jaxlib_knows_flag():
        assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {SETTING}"
    assert apply_cpu_defaults(environ) is False  # idempotent: never appended twice
    assert environ["XLA_FLAGS"].count(FLAG) <= 1


def test_user_setting_and_opt_out_win():
    mine = {"XLA_FLAGS": f"--{FLAG}=dot"}
    assert apply_cpu_defaults(mine) is False and mine["XLA_FLAGS"] == f"--{FLAG}=dot"
    opted_out = {OPT_OUT: "0"}
    assert apply_cpu_defaults(opted_out) is False and "XLA_FLAGS" not in opted_out


def test_unknown_flag_is_not_found_in_jaxlib():
    assert jaxlib_knows_flag() is True  # the pinned jaxlib (0.10) has it; the speed-ups are measured with it
    assert jaxlib_knows_flag("xla_cpu_no_such_flag_in_any_release") is False


def test_importing_the_package_sets_the_flag_and_xla_accepts_it():
    """XLA aborts the process on a flag it cannot parse: run a real computation after the import."""
    code = ("import os, medfusion_jax, jax, jax.numpy as jnp;"
            "y = jax.lax.conv_general_dilated(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5)), (1, 1), 'SAME',"
            " dimension_numbers=('NHWC', 'HWIO', 'NHWC'));"
            "print(float(y.sum())); print(os.environ['XLA_FLAGS'])")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    total, flags = out.stdout.split("\n")[:2]
    # Each output pixel sums 2 channels over its in-image 3x3 neighbours: (2+3+3+2)^2 = 100 neighbours
    # over the 16 pixels of a 4x4 image, for each of 5 output channels.
    assert float(total) == 2 * 100 * 5
    assert flags.strip() == SETTING
