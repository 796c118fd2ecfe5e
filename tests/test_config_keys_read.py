"""Every key of every shipped config (and each variant its docstring documents) is read by something: with reads
recorded (`vlm_jax.config_audit`), build the run (Setup), trace its train step, build its evaluators and its data
stream; any key under model / loss / evals / data / optim that the config sets and nothing read fails the test,
named. (Defaults the config leaves alone may go unread where another setting makes them moot, e.g. decoding
options with evaluation off.)"""
import re
from pathlib import Path

import pytest

from vlm_jax.config import load_config
from vlm_jax.config_audit import leaf_keys, recording

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("model", "loss", "evals", "data", "optim")
SKIP = {"init=DIR", "shards=DIR", "shards=URL"}  # variants that need a trained run or shards on disk (shards: tests/test_shards.py)


def documented_variants() -> list[str]:
    """'file.py:args' for each `--config experiments/…` line of the configs' docstrings (size=test excluded: the
    same keys as the default)."""
    out = []
    for path in sorted((ROOT / "experiments").glob("*.py")):
        for spec in re.findall(r"--config experiments/(\S+)", path.read_text()):
            if "size=test" not in spec and not any(s in spec for s in SKIP):
                out.append(spec)
    return sorted(set(out))


def test_every_config_is_covered():
    shipped = {p.name for p in (ROOT / "experiments").glob("*.py")}
    assert shipped <= {v.split(":")[0] for v in documented_variants()} | {"__init__.py"}, shipped


@pytest.mark.parametrize("spec", documented_variants())
def test_every_key_is_read(spec, data_dir):
    import jax

    from vlm_jax.train.trainer import Setup, finalize_config

    raw = load_config(str(ROOT / "experiments" / spec))
    keys = leaf_keys(raw, SECTIONS)  # what the config sets
    config = finalize_config(load_config(str(ROOT / "experiments" / spec)))
    with config.unlocked():
        config.mesh = [("data", 1)]
    with recording(config) as recorder:
        setup = Setup(config, jax.devices()[:1])
        setup.train_step.jaxpr(setup.abstract_state(), setup.abstract_batch())
        setup.objective.evaluators()
        setup.objective.train_data(8, 0, 0, 1)
    unread = [k for k in keys if not recorder.is_read(k)]
    assert unread == [], f"{spec}: keys nothing reads: {unread}"


def test_the_recorder_sees_leaf_reads_merged_sections_and_bulk_reads_only():
    """The check itself: a key read by attribute, one read through `merged`, one under a bulk `to_dict`; the rest
    stay unread (reaching a section is not reading its keys)."""
    from ml_collections import ConfigDict

    from vlm_jax.config_audit import merged

    c = ConfigDict(dict(loss=dict(a=1, b=2), evals=dict(c=3, d=4), model=dict(image=dict(e=5), f=6)))
    with recording(c) as r:
        assert c.loss.a == 1
        ev = merged({"c": 0, "d": 0, "z": 9}, c.evals)
        assert "c" in ev  # membership is not a read
        assert ev["d"] == 4 and ev.get("z") == 9
        c.model.image.to_dict()
    unread = [k for k in leaf_keys(c, ("loss", "evals", "model")) if not r.is_read(k)]
    assert unread == ["loss.b", "evals.c", "model.f"]
