"""Two jax.distributed processes (4 CPU devices each) train exactly like one process with 8 devices."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

WORKER = Path(__file__).with_name("multihost_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _launch(nproc: int, out: Path) -> None:
    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(nproc), str(port), str(out)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(nproc)]
    try:
        logs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, data_dir):
    _launch(1, tmp_path / "one.npz")
    _launch(2, tmp_path / "two.npz")
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert set(one.files) == set(two.files) and len(one.files) > 20
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
