"""Real processes: a run killed (SIGKILL) or preempted (SIGTERM) and restarted ends bit-identical to an
uninterrupted run of the same length."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.checkpoint import Checkpointer
from vlm_jax.train.trainer import Setup, finalize_config
from steps import cli_env

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "experiments/emoji_two_tower.py:size=test,steps=12"
OVERRIDES = ["--config.mesh=[('data', 1)]", "--config.batch_size=32", "--config.log_every=1",
             "--config.checkpoint.every_steps=4", "--config.evals.sets=[]", "--config.optim.warmup_steps=2"]


def _cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "vlm_jax.main", "--config", CONFIG, "--workdir", str(workdir), *OVERRIDES]


def _steps_logged(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return [r["step"] for r in lines if r.get("split") == "train"]


def _run(workdir: Path, interrupt: int | None = None, at_step: int = 0) -> subprocess.CompletedProcess | int:
    """Runs to completion, or sends `interrupt` once step `at_step` is logged; returns the exit code then. The
    module's runs share a compilation cache (`steps.cli_env`) in the session's temporary folder."""
    proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=cli_env(workdir.parent / "preemption_jit_cache"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if interrupt is None:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out[-3000:]
        return proc.returncode
    deadline = time.time() + 300
    while not any(s >= at_step for s in _steps_logged(workdir)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(interrupt)
    out = proc.communicate(timeout=120)[0]
    if interrupt == signal.SIGTERM:
        assert proc.returncode == 0 and "Preempted: checkpoint saved at step" in out, out[-3000:]
    return proc.returncode


def _final(workdir: Path) -> tuple[dict, list[float]]:
    config = apply_overrides(finalize_config(load_config(CONFIG)),
                             [o[len("--config."):] for o in OVERRIDES])
    setup = Setup(config)
    state, meta = Checkpointer(workdir / "checkpoints", every_steps=4).restore_latest(
        setup.abstract_state(), iter(setup.objective.train_data(32, 0, 0, 1)))
    assert meta["step"] == 12
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r.get("split") == "train"}  # a resumed step overwrites
    return jax.device_get(state.params), [losses[s] for s in range(1, 13)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("full")
    _run(workdir)
    return _final(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_bit_exactly(uninterrupted, tmp_path, sig):
    at = random.randint(5, 10)
    _run(tmp_path, sig, at)
    stopped = max(_steps_logged(tmp_path))
    assert stopped < 12, "the run finished before the signal; nothing was tested"
    _run(tmp_path)
    params, losses = _final(tmp_path)
    want_params, want_losses = uninterrupted
    assert losses == want_losses, (at, stopped)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, want_params)
    assert all(jax.tree.leaves(same)), f"params differ after {sig!r} at step {stopped}"
