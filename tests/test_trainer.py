"""The train loop on real emoji data: learning, exact resume, non-finite stop, config errors."""
import json

import jax
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.trainer import NonFiniteError, finalize_config, train

BASE = ["mesh=[('data', 1)]", "batch_size=32", "progress=False", "evals.sets=['fashion_mnist']",
        "optim.lr=0.003", "optim.warmup_steps=2", "checkpoint.async_save=False"]


def _config(*overrides, loss="clip", steps=8):
    c = finalize_config(load_config(f"experiments/emoji_two_tower.py:size=test,loss={loss},steps={steps}"))
    return apply_overrides(c, BASE + list(overrides))


def _run(config, workdir, stop_after=None):
    losses = {}
    out = train(config, workdir, stop_after=stop_after, on_step=lambda s, m: losses.__setitem__(s, m["loss"]))
    return out, losses


@pytest.mark.parametrize("experiment", ["emoji_two_tower.py:loss=clip", "emoji_two_tower.py:loss=siglip",
                                        "emoji_clippo.py:loss=clip"])
def test_learns_pairings_of_a_small_concept_set(tmp_path, data_dir, experiment):
    """200 steps on 36 concepts (one style, no augmentation, one template): in-batch retrieval must reach 8×
    chance. Wrong targets, broken gradients or a disconnected tower stay at chance (1/32)."""
    c = finalize_config(load_config(f"experiments/{experiment},size=test,steps=200"))
    c = apply_overrides(c, BASE + ["checkpoint.every_steps=0", "evals.sets=[]"])
    with c.unlocked():
        c.data.update(max_concepts=40, train_styles=("noto",), augment={}, templates=["{}"])
    acc = {}
    train(c, tmp_path, on_step=lambda s, m: acc.__setitem__(s, m["acc/i2t"]))
    early, late = np.mean([acc[s] for s in range(1, 11)]), np.mean([acc[s] for s in range(191, 201)])
    assert late >= 0.25 and early < 0.15, (early, late)


def test_logit_scale_is_clamped(tmp_path, data_dir):
    """CLIP's t never exceeds loss.temperature_max (100): an init above it is clamped by the first update."""
    for t_max, workdir in ((100.0, "clamped"), (0.0, "free")):
        c = _config("model.temperature_init=150.0", "checkpoint.every_steps=0", "evals.sets=[]",
                    f"loss.temperature_max={t_max}", steps=1)
        t = float(train(c, tmp_path / workdir)["state"].params["t"])
        if t_max:
            assert t == pytest.approx(float(np.log(np.float32(100.0))), rel=1e-7)
        else:
            assert t > np.log(140.0)  # unclamped: one Adam step of at most lr from log(150)


def test_resume_matches_uninterrupted(tmp_path, data_dir):
    config = _config("checkpoint.every_steps=4", steps=8)
    full, full_losses = _run(config, tmp_path / "full")
    _, part1 = _run(config, tmp_path / "split", stop_after=5)  # checkpoint at 4, one step lost
    resumed, part2 = _run(config, tmp_path / "split")
    assert min(part2) == 5  # resumed from the step-4 checkpoint
    for s in range(5, 9):
        assert part2[s] == full_losses[s], (s, part2[s], full_losses[s])
    assert part1[5] == full_losses[5]
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), full["state"].params, resumed["state"].params)
    assert all(jax.tree.leaves(same))
    records = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "samples_per_sec", "lr", "data/skipped/image"} <= set(records[0])
    assert [r for r in records if r["split"] == "train"][-1]["data/skipped/image"] == 0  # the emoji data is clean
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["step"] == 8 and "zeroshot/fashion_mnist/all/top@1/model" in results["evals"]


def test_nonfinite_loss_stops_with_step(tmp_path, data_dir):
    config = _config("optim.lr=1e12", "optim.clip_norm=0.0", "optim.warmup_steps=0", "log_every=1", steps=20)
    seen = []
    with pytest.raises(NonFiniteError, match=r"step (\d+)") as err:
        train(config, tmp_path, on_step=lambda s, m: seen.append(s))
    bad_step = int(err.value.args[0].split("step ")[1].split(" ")[0])
    assert bad_step == (max(seen) + 1 if seen else 1)
