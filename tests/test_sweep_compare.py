"""Seeded comparisons: per-point mean ± std, Welch's test against scipy's own, and the tool on a synthetic sweep CSV
whose answer is known."""
import csv
import json

import numpy as np
import pytest
from scipy import stats

from vlm_jax.scaling import compare
from vlm_jax.tools import sweep_compare


def test_welch_matches_scipy_ttest():
    rng = np.random.default_rng(0)
    for n_a, n_b in ((3, 3), (3, 5), (8, 4)):
        a, b = rng.normal(0.3, 0.05, n_a), rng.normal(0.25, 0.1, n_b)
        ours = compare.welch(a, b)
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-8)
        assert ours["diff"] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        assert ours["se"] == pytest.approx(np.sqrt(a.var(ddof=1) / n_a + b.var(ddof=1) / n_b), rel=1e-12)


def test_summarize_groups_by_x_brute_force():
    rng = np.random.default_rng(1)
    xs, groups = rng.choice([32, 64, 128], 40), rng.choice(["a", "b"], 40)
    ys = rng.random(40)
    summary = compare.summarize(xs, ys, groups)
    for g in ("a", "b"):
        assert [p.x for p in summary[g]] == sorted({float(x) for x, gg in zip(xs, groups) if gg == g})
        for p in summary[g]:
            vals = [y for x, y, gg in zip(xs, ys, groups) if gg == g and x == p.x]
            assert p.n == len(vals) and p.mean == pytest.approx(np.mean(vals))
            assert p.std == pytest.approx(np.std(vals, ddof=1) if len(vals) > 1 else np.nan, nan_ok=True)


def test_tool_finds_the_planted_difference(tmp_path):
    """Group "good" is 0.10 better than "bad" at batch 32 only; the test flags 32 and not the others."""
    rng = np.random.default_rng(2)
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["run", "batch", "loss", "acc"])
        w.writeheader()
        for seed in range(4):
            for batch in (32, 256, 1024):
                for loss in ("good", "bad"):
                    acc = 0.5 + (0.10 if loss == "good" and batch == 32 else 0.0) + rng.normal(0, 0.01)
                    w.writerow(dict(run=f"{seed}-{batch}-{loss}", batch=batch, loss=loss, acc=acc))
    out = sweep_compare.main(["--csv", str(path), "--x", "batch", "--group", "loss", "--metric", "1-acc=error",
                              "--diff", "good,bad", "--md", str(tmp_path / "t.md"), "--json", str(tmp_path / "r.json"),
                              "--out", str(tmp_path / "p.png")])
    diff = {d["x"]: d for d in out["error"]["diff"]}
    assert diff[32.0]["diff"] == pytest.approx(-0.10, abs=0.03) and diff[32.0]["p"] < 1e-3
    assert diff[256.0]["p"] > 1e-3 and diff[1024.0]["p"] > 1e-3
    assert json.loads((tmp_path / "r.json").read_text())["error"]["points"]["good"][0]["n"] == 4
    table = (tmp_path / "t.md").read_text()
    assert "| 32 | " in table and "(4)" in table and (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(ValueError, match="columns"):
        sweep_compare.main(["--csv", str(path), "--x", "batch", "--group", "objective", "--metric", "acc"])
    with pytest.raises(ValueError, match="not values of 'loss'"):
        sweep_compare.main(["--csv", str(path), "--x", "batch", "--group", "loss", "--metric", "acc",
                            "--diff", "good,sigmoid"])
