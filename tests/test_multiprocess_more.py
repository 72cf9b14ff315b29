"""More of the multi-process job (issue 14, items 5 and 7), with real processes on localhost: FID/KID/precision/
recall computed by two processes, processes started with different flags, a coordinator that never comes up.

A file of its own (beside tests/test_multiprocess.py, whose tests share trained runs) so that the test
runner's two workers share the multi-process tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_multiprocess import FLAGS, ROOT, _env, _free_port, _launch

pytestmark = pytest.mark.slow


def test_two_processes_score_as_one(tmp_path):
    """eval.fid as a 2-process job: each process extracts the Inception features of its share of each side
    (13 dataset images and 10 files: uneven shares), gathered once; FID, KID and precision/recall per class
    equal the one-process numbers (item 5)."""
    from medfusion_jax.data import make_dataset
    from medfusion_jax.images import save_png

    fake = tmp_path / "fake"
    source = make_dataset("phantom-cxr", split="validation", image_size=32, num_examples=10)
    for i in range(10):
        item = source[i]
        save_png(fake / source.class_names[item["label"]] / f"{i:03d}.png", item["image"])
    from eval import fid as fid_cli

    flags = ["--real", "phantom-cxr", "--split", "test", "--num-examples", "13", "--image-size", "32", "--fake",
             str(fake), "--per-class", "--kid-subsets", "5", "--no-progress"]
    assert fid_cli.main([*flags, "--json", str(tmp_path / "one.json")]) == 0  # the reference: this process
    results = _launch([sys.executable, "-m", "eval.fid", *flags, "--json", str(tmp_path / "two.json")], 2, 1)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two"))
    assert [r["subset"] for r in one] == [r["subset"] for r in two] == ["all", "cardiomegaly", "no cardiomegaly"]
    for a, b in zip(one, two, strict=True):
        assert (a["n_real"], a["n_fake"]) == (b["n_real"], b["n_fake"])
        for key in ("fid", "kid_mean", "kid_std", "precision", "recall"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["subset"], key, a[key], b[key])


def test_processes_started_with_different_flags_all_stop_naming_them(tmp_path):
    """Item 7: a job whose processes were given different flags stops on every process before any work, with
    exit status 2 and a message naming the flag and each process's value."""
    port = _free_port()
    base = [sys.executable, "-m", "train.autoencoder", *FLAGS, "--run-dir", str(tmp_path / "run"),
            "--coordinator-address", f"localhost:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen([*base, "--process-id", str(i), *(["--lr", "0.5"] if i == 1 else [])], cwd=ROOT,
                              env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err[-2000:]
        assert "were started with different flags: --lr (process 0: None, process 1: 0.5)" in err, err[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_coordinator_that_never_comes_up_ends_with_a_message(tmp_path):
    """Item 7: process 1 of a job whose coordinator (process 0) is never started gives up after --init-timeout
    with a message, instead of waiting for JAX's default 300 s."""
    import time

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "train.autoencoder", *FLAGS, "--run-dir", str(tmp_path / "run"),
                           "--coordinator-address", f"localhost:{_free_port()}", "--num-processes", "2",
                           "--process-id", "1", "--init-timeout", "5"], cwd=ROOT, env=_env(1), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "process 1 of 2 could not join the job within 5 s: the coordinator localhost:" in proc.stderr
    assert time.monotonic() - start < 120
