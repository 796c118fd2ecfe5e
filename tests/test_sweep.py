"""Sweeps through the command-line tool: a 2×1 grid of a few steps end to end, finished runs skipped, an
interrupted run resumed, bad overrides rejected before anything runs, results collected into one CSV."""
import csv
import json
import textwrap

import pytest

from vlm_jax.config import ConfigError
from vlm_jax.scaling import sweep as sw
from vlm_jax.tools import sweep as tool
from vlm_jax.train.trainer import train

SWEEP = textwrap.dedent('''
    def get_sweep(arg=None):
        return dict(
            base="experiments/emoji_two_tower.py:size=test",
            axes=dict(width={"w16": ["model.image.width=16", "model.image.mlp_dim=32"],
                             "w32": {"overrides": ["model.image.width=32"]}},
                      steps={"3": ["total_steps=3"]}),
            overrides=["mesh=[('data', 1)]", "batch_size=16", "checkpoint.every_steps=1", "progress=False",
                       "evals.sets=['emoji']", "evals.batch_size=256", "optim.warmup_steps=1"])
''')


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "grid.py"
    path.write_text(SWEEP)
    return str(path)


@pytest.mark.slow
def test_grid_runs_skips_resumes_and_collects(sweep_file, tmp_path, data_dir):
    runs = sw.expand(sw.load_sweep(sweep_file))
    assert [r.name for r in runs] == ["width-w16_steps-3", "width-w32_steps-3"]
    lines = tool.main([sweep_file, "print", "--dir", str(tmp_path)])
    assert len(lines) == 2 and f"--workdir {tmp_path}/width-w32_steps-3" in lines[1]
    assert "--config.total_steps=3" in lines[1] and "--config.model.image.width=32" in lines[1]

    partial = runs[0]  # interrupted after 1 of its 3 steps
    train(sw.resolved_config(partial), tmp_path / partial.name, stop_after=1)
    assert tool.main([sweep_file, "status", "--dir", str(tmp_path)]) == {partial.name: "partial", runs[1].name: "new"}

    assert tool.main([sweep_file, "run", "--dir", str(tmp_path)]) == {r.name: "ran" for r in runs}
    resumed = [json.loads(l) for l in (tmp_path / partial.name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed if r.get("split") == "train"] == [1, 2, 3]  # steps 2, 3 after the resume
    assert set(tool.main([sweep_file, "status", "--dir", str(tmp_path)]).values()) == {"done"}
    assert tool.main([sweep_file, "run", "--dir", str(tmp_path)]) == {r.name: "skipped" for r in runs}

    rows = tool.main([sweep_file, "collect", "--dir", str(tmp_path)])
    with open(tmp_path / "runs.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r.name for r in runs] and len(rows) == 2
    for row, run in zip(table, runs):
        res = json.loads((tmp_path / run.name / "results.json").read_text())
        assert int(row["step"]) == int(run.name[-1]) == res["step"]
        assert int(row["samples_seen"]) == 16 * res["step"]
        assert float(row["train_gmacs"]) == pytest.approx(float(row["forward_gmacs_per_sample"]) * 16 * res["step"])
        key = "evals/zeroshot/emoji/cross/nonflag/top@1/model"
        assert float(row[key]) == res["evals"]["zeroshot/emoji/cross/nonflag/top@1/model"]
        assert (row["width"], row["steps"]) == (dict(run.labels)["width"], dict(run.labels)["steps"])
    w16, w32 = (float(table[i]["forward_gmacs_per_sample"]) for i in (0, 1))
    assert w16 < w32  # a wider image tower costs more per sample


def test_bad_override_fails_before_any_run(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(SWEEP.replace("total_steps=3", "total_stepz=3"))
    with pytest.raises(ConfigError, match="total_stepz"):
        tool.main([str(path), "run", "--dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit, match="outside 1..2"):
        tool.main([str(path), "print", "--dir", str(tmp_path), "--index", "5"])
