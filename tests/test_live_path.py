"""The programs `train()` runs carry the configured loss kernel and the activation sharding constraints.

Each run goes through the real entry point; the assertions read the executable that ran
(`setup.train_step.compiled()`), its lowered StableHLO, and the jaxpr the same jitted function traces.
"""
import re

import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.trainer import finalize_config, train

B, D = 2048, 8  # the B×B logits dominate this tiny model's step
TINY = ["mesh=[('data', 8)]", f"batch_size={B}", "progress=False", "evals.sets=[]", "checkpoint.every_steps=0",
        "checkpoint.async_save=False", "data.image_size=8", "data.text_len=4", "model.text.max_len=4",
        "model.image.width=8", "model.text.width=8", "model.image.mlp_dim=8", "model.text.mlp_dim=8",
        f"model.embed_dim={D}"]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """One train() step per loss implementation on 8 devices: (setup, abstract step inputs)."""
    out = {}
    for impl in ("full", "ring", "gather"):
        c = finalize_config(load_config("experiments/emoji_two_tower.py:size=test,steps=1"))
        c = apply_overrides(c, TINY + [f"loss.impl={impl}"])
        setup = train(c, tmp_path_factory.mktemp(impl), stop_after=1)["setup"]
        out[impl] = setup
    return out


def _primitives(jaxpr) -> set[str]:
    """Names of every primitive in a jaxpr, nested ones included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr → Jaxpr
                if hasattr(sub, "eqns"):
                    names |= _primitives(sub)
    return names


def _step_jaxpr(setup):
    """The train step's jaxpr traced exactly as train() traced it (same MeshJit, same input signature)."""
    return setup.train_step.jaxpr().jaxpr


def test_ring_kernel_runs_in_the_trained_program(runs):
    hlo = runs["ring"].train_step.compiled().as_text()
    assert "collective-permute" in hlo
    assert "collective-permute" not in runs["full"].train_step.compiled().as_text()


def test_gather_kernel_runs_in_the_trained_program(runs):
    hlo = runs["gather"].train_step.compiled().as_text()
    assert re.search(rf"= f32\[{B},{D}\]\S* all-gather\(", hlo), "no all-gather of the [B, D] embeddings"
    prims = _primitives(_step_jaxpr(runs["gather"]))
    assert {"shard_map", "all_gather"} <= prims, prims
    assert "shard_map" not in _primitives(_step_jaxpr(runs["full"]))


def test_ring_temp_memory_well_below_full(runs):
    ring = runs["ring"].train_step.compiled().memory_analysis().temp_size_in_bytes
    full = runs["full"].train_step.compiled().memory_analysis().temp_size_in_bytes
    assert ring < 0.3 * full, (ring, full)


def test_activation_constraints_in_lowered_program(runs):
    text = runs["full"].train_step.lowered().as_text()
    constraints = re.findall(r"sdy\.sharding_constraint [^\n]*", text)
    batch_sharded = [c for c in constraints if '[{"data"}' in c]
    assert len(batch_sharded) >= 10, constraints[:5]  # every block's residual stream, in both towers
