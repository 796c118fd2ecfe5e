"""TPU dry run: topology names, the jaxpr FLOP counter, and compiling real train steps for a TPU slice."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import sharding as shd
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.models.vit import ViT
from vlm_jax.scaling import hardware
from vlm_jax.scaling.flops import fn_flops
from vlm_jax.tools import topology
from vlm_jax.tools.dryrun import dry_run, format_report, parse_oom
from vlm_jax.train.trainer import finalize_config

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu missing: pip install -e .[tpu-aot] (the test command does)")
TINY = "experiments/two_tower_scale.py:variant=Ti/16,batch=64,res=64"
TINY_OVERRIDES = ["data.text_len=16", "model.text.max_len=16"]


def test_topology_names():
    assert topology.parse("v5p-128") == (hardware.chip("v5p"), (4, 4, 4))  # 128 cores = 64 megacore chips
    assert topology.parse("v5e-256") == (hardware.chip("v5e"), (16, 16))
    assert topology.parse("v4-8") == (hardware.chip("v4"), (2, 2, 1))
    assert topology.parse("v6e:4x8")[1] == (4, 8)
    with pytest.raises(ValueError, match="v5p:4x4x4"):
        topology.parse("tpu-128")
    with pytest.raises(ValueError, match="3-D"):
        topology.parse("v5p:4x4")
    assert hardware.chip_for_device_kind("TPU v5 lite").name == "v5e"
    assert hardware.chip_for_device_kind("NVIDIA H100 80GB HBM3").bf16_flops == 989e12
    assert hardware.chip_for_device_kind("cpu") is None


def test_parse_oom_messages():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
           "(99.86G) exceeds available HBM (15.75G).")
    need, have = parse_oom(msg)
    assert need == int(99.86 * 2 ** 30) and have == int(15.75 * 2 ** 30)
    assert parse_oom("Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm.") == \
        (int(20.5 * 2 ** 30), int(15.75 * 2 ** 30))
    assert parse_oom("something else") == (None, None)


def test_flop_counter_against_formulas():
    f32 = jnp.float32
    a, b = jax.ShapeDtypeStruct((3, 5, 7), f32), jax.ShapeDtypeStruct((3, 7, 11), f32)
    assert fn_flops(jnp.matmul, a, b) == 2 * 3 * 5 * 7 * 11
    x, k = jax.ShapeDtypeStruct((2, 16, 16, 3), f32), jax.ShapeDtypeStruct((4, 4, 3, 8), f32)
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (4, 4), "VALID",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert fn_flops(conv, x, k) == 2 * (2 * 4 * 4 * 8) * (4 * 4 * 3)  # outputs × window MACs
    w = jax.ShapeDtypeStruct((6, 16, 16), f32)
    v = jax.ShapeDtypeStruct((4, 16), f32)
    scanned = lambda w, v: jax.lax.scan(lambda h, wi: (h @ wi, None), v, w)[0]  # noqa: E731
    assert fn_flops(scanned, w, v) == 6 * 2 * 4 * 16 * 16
    w1, w2 = jax.ShapeDtypeStruct((16, 32), f32), jax.ShapeDtypeStruct((32, 8), f32)
    grad = jax.grad(lambda ws, v: jnp.sum((v @ ws[0]) @ ws[1]))  # 2 forward dots + 3 backward (no dv)
    assert fn_flops(grad, (w1, w2), v) == 2 * 4 * (16 * 32 + 32 * 8) + 2 * 4 * (32 * 8 + 16 * 32 + 32 * 8)


@pytest.mark.parametrize("scan", [False, True])
def test_vit_b16_flops_match_published(scan):
    """ViT-B/16 at 224 px: 17.6 GMACs per image (Dosovitskiy et al.; timm's vit_base_patch16_224)."""
    model = ViT(variant="B/16", pool_type="tok", num_classes=1000, scan=scan, remat_policy="full" if scan else "none")
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    macs = fn_flops(lambda p, x: model.apply(p, x), params, x) / 2
    assert abs(macs / 17.56e9 - 1) < 0.01, macs


@needs_libtpu
def test_multislice_mesh_on_tpu_topology():
    _, devices = topology.devices("v5e:2x2", num_slices=2)
    mesh = shd.make_mesh([("data", 1), ("fsdp", -1)], devices, dcn=[("data", 2)])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices == np.array([[0], [1]])).all()  # each data row is one slice: fsdp traffic stays in ICI


def _config(spec, overrides=()):
    return apply_overrides(finalize_config(load_config(spec)), list(overrides))


@pytest.fixture(scope="module")
def tiny_report():
    return dry_run(_config(TINY, TINY_OVERRIDES), "v5e:2x2")


@needs_libtpu
def test_tiny_config_fits_with_sane_numbers(tiny_report):
    r = tiny_report
    assert r.fits and r.num_devices == 4 and r.mesh["fsdp"] == 4 and r.batch_per_chip == 16
    config = _config(TINY, TINY_OVERRIDES)
    from vlm_jax.objectives.contrastive import ContrastiveObjective
    obj = ContrastiveObjective(config)
    batch = obj.init_batch(config.batch_size)
    params = jax.eval_shape(lambda i, t: obj.model().init({"params": jax.random.key(0)}, i, t),
                            batch["image"], batch["text"])
    n = sum(x.size for x in jax.tree.leaves(params))
    assert r.num_params == n
    assert n * 4 / 4 <= r.params_bytes <= 1.05 * n * 4 / 4  # fp32, sharded 4 ways (small arrays replicated)
    assert abs(r.opt_state_bytes / (2 * r.params_bytes) - 1) < 0.01  # Adam: mu and nu shaped like params
    assert r.params_bytes + r.opt_state_bytes < r.required_bytes < r.hbm_bytes
    forward = fn_flops(lambda p, b: obj.model().apply(p, b["image"], b["text"]), params, batch)
    assert 2.9 < r.model_flops_total / forward <= 3.0  # backward ≈ 2 × forward
    assert r.hardware_flops_total >= r.model_flops_total
    assert r.step_seconds_at_mfu == pytest.approx(r.model_flops_total / (4 * 197e12 * r.mfu))
    assert "FITS" in format_report(r)


@needs_libtpu
def test_oversize_config_does_not_fit():
    r = dry_run(_config("experiments/two_tower_scale.py:variant=B/16,batch=8192"), "v5e:2x2")
    assert not r.fits
    assert r.required_bytes > r.hbm_bytes > 15 * 2 ** 30  # the compiler's numbers: needed vs v5e's ~15.75 GiB
    assert any("grad_accum_steps" in h for h in r.hints)
    text = format_report(r)
    assert "DOES NOT FIT" in text and "needs" in text


@needs_libtpu
def test_naflex_config_compiles_with_the_fixed_configs_flops(tiny_report):
    """A NaFlex budget of 16 patches (any aspect) costs what 64 px squares at patch 16 cost (16 patches): the dry
    run compiles the NaFlex batch and counts the same model FLOPs, up to the per-image position-table resize."""
    config = _config(TINY + ",naflex=16", TINY_OVERRIDES)
    r = dry_run(config, "v5e:2x2")
    assert r.fits and r.batch_per_chip == 16
    assert r.model_flops_total == pytest.approx(tiny_report.model_flops_total, rel=0.02)
    assert r.model_flops_total != tiny_report.model_flops_total  # the resize is counted, so this is NaFlex
    from vlm_jax.objectives.contrastive import ContrastiveObjective
    shapes = jax.tree.map(lambda v: v.shape, ContrastiveObjective(config).init_batch(64)["image"])
    assert shapes == {"patches": (64, 16, 16 * 16 * 3), "positions": (64, 16, 2), "mask": (64, 16), "grid": (64, 2)}


def test_synthetic_naflex_stream_keeps_aspect_within_budget():
    """The synthetic NaFlex stream (dry runs, benchmarks): each batch at one of the budgets, every image's mask
    covering exactly its grid, grids of many shapes, the same batches on resume."""
    from vlm_jax.data.synthetic import SyntheticPairs
    from ml_collections import ConfigDict
    data = SyntheticPairs(ConfigDict(dict(image_size=64, text_len=8, vocab_size=100,
                                          naflex=dict(budgets=(9, 16), patch=16))))
    it = iter(data.train(8, seed=3, process_index=0, process_count=1))
    batches = [next(it) for _ in range(6)]
    seen = set()
    for b in batches:
        img = b["image"]
        budget = img["patches"].shape[1]
        assert budget in (9, 16) and img["patches"].dtype == np.uint8 and b["text"].shape == (8, 8)
        rows, cols = img["grid"][:, 0], img["grid"][:, 1]
        assert (rows * cols <= budget).all() and (img["mask"].sum(1) == rows * cols).all()
        assert (img["positions"][..., 0].max(1) == rows - 1).all() and (img["positions"][..., 1].max(1) == cols - 1).all()
        assert not img["patches"][~img["mask"]].any()
        seen |= set(zip(rows.tolist(), cols.tolist()))
    assert len({b["image"]["patches"].shape[1] for b in batches}) == 2 and len(seen) >= 4
    it2 = iter(data.train(8, seed=3, process_index=0, process_count=1))
    next(it2)
    state = it2.get_state()
    it3 = iter(data.train(8, seed=3, process_index=0, process_count=1))
    it3.set_state(state)
    np.testing.assert_array_equal(next(it3)["image"]["patches"], batches[1]["image"]["patches"])


@needs_libtpu
def test_plan_shares_compiles_and_scales_chip_hours_with_steps(tmp_path, tiny_report, capsys):
    """`python -m vlm_jax.tools.plan` over a sweep: runs differing only in steps share one compilation and their
    chip-hours scale with the steps; each run's step time is the dry run's of its own config; the markdown's total
    is the JSONL rows' sum; a run without a slice is refused."""
    import json

    from vlm_jax.tools import plan

    sweep = tmp_path / "grid.py"
    sweep.write_text(
        "def get_sweep(arg=None):\n"
        f"    return dict(base={TINY!r}, overrides={TINY_OVERRIDES!r},\n"
        "                axes=dict(steps={'a': ['total_steps=100'], 'b': ['total_steps=300']}),\n"
        "                slices=[('steps-*', 'v5e:2x2')])\n")
    plan.main([str(sweep), "--md", str(tmp_path / "plan.md"), "--jsonl", str(tmp_path / "plan.jsonl")])
    assert capsys.readouterr().out.count("FITS") == 1  # one compilation for both runs
    a, b = [json.loads(line) for line in (tmp_path / "plan.jsonl").read_text().splitlines()]
    assert (a["steps"], b["steps"], a["chips"]) == (100, 300, 4) and a["fits"] and b["fits"]
    assert a["step_s"] == pytest.approx(tiny_report.step_seconds_at_mfu, rel=1e-6)
    assert b["chip_hours"] == pytest.approx(3 * a["chip_hours"], rel=1e-9) and a["chip_hours"] > 0
    md = (tmp_path / "plan.md").read_text()
    assert f"{a['chip_hours'] + b['chip_hours']:,.0f} chip-hours" in md
    # a model error in a later run surfaces before the first compilation (none is printed)
    sweep.write_text(sweep.read_text().replace("'total_steps=300'", "'total_steps=300', 'model.image.remat_policy=fulll'"))
    with pytest.raises(ValueError, match="fulll"):
        plan.main([str(sweep)])
    assert "FITS" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="no slice for run 'x'"):
        plan.slice_for("x", [("steps-*", "v5e:2x2")])
