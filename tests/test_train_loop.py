"""Train-loop guarantees through `train()` on a toy per-example objective: gradient accumulation, `extra`
threading, the logged lr after a skipped step, and resume safety (config changes, metric logs, train time)."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from toy_objective import toy_config, toy_data
from vlm_jax import sharding as shd
from vlm_jax.train.microbatch import merge_microbatches, split_microbatches
from vlm_jax.train.optim import make_schedule
from vlm_jax.train.resume import ConfigMismatchError
from vlm_jax.train.trainer import train


def _records(workdir, split="train"):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _numpy_step(params, batch_size):
    """One SGD step (lr 1) on the mean squared error of the first batch, in float64."""
    d = toy_data()
    x, y = d["x"][:batch_size].astype(np.float64), d["y"][:batch_size].astype(np.float64)
    w, c = np.asarray(params["Dense_0"]["kernel"], np.float64)[:, 0], float(params["Dense_0"]["bias"][0])
    r = x @ w + c - y
    return w - 2 * x.T @ r / batch_size, c - 2 * r.mean()


@pytest.mark.parametrize("devices", [1, 8])
def test_accumulated_step_equals_big_batch_step(tmp_path, devices):
    init = train(toy_config(total_steps=1), tmp_path / "init", stop_after=0)["state"].params
    runs = {}
    for accum in (1, 4):
        c = toy_config(grad_accum_steps=accum, mesh=[("data", devices)])
        runs[accum] = train(c, tmp_path / f"a{accum}")
    want_w, want_c = _numpy_step(jax.device_get(init), 64)
    for accum, out in runs.items():
        p = jax.device_get(out["state"].params)["Dense_0"]
        np.testing.assert_allclose(p["kernel"][:, 0], want_w, rtol=1e-5, atol=1e-6, err_msg=f"accum={accum}")
        np.testing.assert_allclose(p["bias"][0], want_c, rtol=1e-5, atol=1e-6)
    extra = jax.device_get(runs[4]["state"].extra)
    assert int(extra["calls"]) == 4  # every micro-batch saw (and updated) the extra state in turn
    assert int(extra["rows"]) == 64 and int(extra["index_sum"]) == sum(range(64))


def test_microbatches_are_strided_and_span_every_device():
    mesh = shd.make_mesh([("data", 8)])
    batch = {"x": np.arange(64 * 3, dtype=np.float32).reshape(64, 3)}
    glob = shd.global_batch(batch, shd.batch_sharding(mesh))
    micro = shd.MeshJit(lambda b: split_microbatches(b, 4), mesh, shd.DEFAULT_RULES)(glob)
    for k in range(4):
        np.testing.assert_array_equal(np.asarray(micro["x"][k]), batch["x"][k::4])
    assert micro["x"].sharding.spec == P(None, "data")  # each micro-batch is split over all 8 devices
    np.testing.assert_array_equal(np.asarray(merge_microbatches(micro)["x"]), batch["x"])


def test_logged_lr_follows_applied_updates_after_a_skipped_step(tmp_path):
    # batch size 8, no shuffling: row 20 lies in the 3rd batch, so step 3 is non-finite and skipped
    c = toy_config(total_steps=6, batch_size=8, nonfinite="skip", data=dict(nan_row=20),
                   optim=dict(name="sgd", lr=0.01, weight_decay=0.0, clip_norm=0.0, warmup_steps=10,
                              schedule="constant"))
    train(c, tmp_path)
    schedule = make_schedule(_finalized_optim(c), 6)
    records = {r["step"]: r for r in _records(tmp_path)}
    assert [records[s]["nonfinite"] for s in range(1, 7)] == [0, 0, 1, 0, 0, 0]
    applied_before = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 4}  # step 3's update was dropped
    for s, n in applied_before.items():
        assert records[s]["lr"] == pytest.approx(float(schedule(n)), rel=1e-6), s
    assert records[6]["nonfinite_skipped"] == 1


def _finalized_optim(c):
    from vlm_jax.train.trainer import finalize_config
    return finalize_config(c).optim


def _resumable(**kw):
    return toy_config(**{"total_steps": 8, "checkpoint": dict(every_steps=4, async_save=False), **kw})


def test_resume_refuses_a_structural_config_change(tmp_path):
    train(_resumable(), tmp_path, stop_after=6)
    with pytest.raises(ConfigMismatchError, match=r"optim\.name: 'sgd' → 'adamw'"):
        train(_resumable(optim=dict(name="adamw", lr=1.0, weight_decay=0.0, clip_norm=0.0, warmup_steps=0,
                                    schedule="constant")), tmp_path, allow_config_change=True)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["name"] == "sgd"  # not overwritten


def test_resume_refuses_a_run_changing_config_unless_allowed(tmp_path):
    train(_resumable(), tmp_path, stop_after=6)
    with pytest.raises(ConfigMismatchError, match=r"total_steps: 8 → 10.*--allow_config_change"):
        train(_resumable(total_steps=10), tmp_path)
    out = train(_resumable(total_steps=10), tmp_path, allow_config_change=True)
    assert out["step"] == 10
    changes = _records(tmp_path, "config_change")
    assert changes == [{"step": 4, "split": "config_change", "changes": {"total_steps": [8, 10]}}]


def test_neutral_config_changes_resume_silently(tmp_path):
    train(_resumable(), tmp_path, stop_after=6)
    out = train(_resumable(log_every=2, mesh=[("data", 8)]), tmp_path)
    assert out["step"] == 8 and not _records(tmp_path, "config_change")


def test_resumed_run_logs_each_step_once_and_sums_train_time(tmp_path):
    train(_resumable(), tmp_path, stop_after=6)  # checkpoint at 4; steps 5 and 6 are redone
    out = train(_resumable(), tmp_path)
    steps = [r["step"] for r in _records(tmp_path)]
    assert steps == list(range(1, 9))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_seconds"] > results["segment_seconds"] > 0
    assert out["train_seconds"] == results["train_seconds"]



def test_cli_refuses_a_changed_config_and_names_the_flag(tmp_path):
    from vlm_jax import main

    spec = tmp_path / "toy_config.py"
    spec.write_text("from toy_objective import toy_config\n\n\ndef get_config():\n"
                    "    return toy_config(total_steps=8, checkpoint=dict(every_steps=4, async_save=False))\n")
    workdir = str(tmp_path / "run")
    train(_resumable(), workdir, stop_after=6)
    with pytest.raises(SystemExit, match=r"total_steps: 8 → 12.*--allow_config_change"):
        main.main(["--config", str(spec), "--workdir", workdir, "--config.total_steps=12"])
    out = main.main(["--config", str(spec), "--workdir", workdir, "--config.total_steps=12", "--allow_config_change"])
    assert out["step"] == 12
