"""The MFU meter: analytic model FLOPs equal the jaxpr count of the real train step; MFU arithmetic; CPU peak."""
import io
import json

import jax
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.scaling import compute, hardware
from vlm_jax.scaling.flops import jaxpr_flops
from vlm_jax.train.progress import Progress
from vlm_jax.train.trainer import Setup, finalize_config, step_flops, train

ONE_DEVICE = ["mesh=[('data', 1)]", "batch_size=8"]


@pytest.mark.parametrize("experiment,overrides", [
    ("emoji_two_tower.py:size=test", []),
    ("emoji_two_tower.py:size=test,loss=siglip", ["grad_accum_steps=2", "model.image.pool_type=tok"]),
    ("emoji_two_tower.py", []),  # map pooling in both towers
    ("emoji_clippo.py:size=test", {"separate_heads": True}),
    ("emoji_coca.py:size=test", []),
    ("emoji_cappa.py:size=test", []),
    ("emoji_prefixlm.py:size=test", []),
    ("multitask_pali.py:size=test", []),
    ("multitask_pali.py:size=test,layout=decoder", []),
    ("emoji_mae.py:size=test", []),
    ("emoji_flava.py:size=test", []),
    ("emoji_flava.py:size=test,parts=mlm", []),
    ("emoji_lit.py:size=test", []),  # the locked MiniLM runs forward only
    ("emoji_lit.py:size=test,tower=image,init=unused", []),  # the locked ViT encoder runs forward only
    ("emoji_siglip2.py:size=test", ["loss.distill_start=0.0"]),  # self-distillation from the first step
    ("emoji_contrastive_family.py:method=llip,size=test", []),  # mixture tokens pooled per caption
    ("emoji_contrastive_family.py:method=kelip,size=test", []),  # two local crops at half the resolution
    ("emoji_contrastive_family.py:method=declip,size=test", []),  # two views each, MLM, the queue's neighbours
    ("emoji_contrastive_family.py:method=zerovl,size=test", []),  # mixup adds no matmul
    ("emoji_contrastive_family.py:method=alip,size=test", []),  # two captions per image, two similarity matrices
    ("emoji_contrastive_family.py:method=pyramidclip,size=test", []),  # two views, the scenes' kept patches, 3 texts
    ("emoji_contrastive_family.py:method=raclip,size=test", []),  # retrieval (forward only) and the attention module
    ("emoji_contrastive_family.py:method=oner,size=test", []),  # one encoder over four sequences, five similarities
])
def test_analytic_step_flops_equal_the_jaxpr_of_the_train_step(data_dir, experiment, overrides):
    """The meter's FLOPs per step (analytic, from the model config) vs the matmul FLOPs of the jitted train step
    the trainer runs (forward, backward, micro-batch scan), counted on its jaxpr: within 2% (here: exact)."""
    config = finalize_config(load_config(f"experiments/{experiment}"))
    if isinstance(overrides, dict):  # model keys the experiment leaves out
        with config.unlocked():
            config.model.update(overrides)
        overrides = []
    config = apply_overrides(config, ONE_DEVICE + overrides)
    setup = Setup(config)
    counted = jaxpr_flops(setup.train_step.jaxpr(setup.abstract_state(), setup.abstract_batch()))
    analytic = step_flops(setup)
    if config.grad_accum_steps > 1:  # GradCache's first pass embeds every micro-batch once more (not model FLOPs)
        parts = setup.objective.forward_flops(setup.objective.init_batch(config.batch_size))
        analytic += sum(parts.values()) - parts["similarity"]
    assert analytic == pytest.approx(counted, rel=0.02), (analytic, counted)


def test_forward_parts_match_hand_formula():
    """A ViT-B/16 image tower at 224 px + CLIP's 12-layer width-512 text tower: the paper's ~20.6 GMACs per pair
    (Cherti et al. 2023, table of forward GMACs), and the transformer formula 24·L·d² + 4·L²·d per layer."""
    from vlm_jax.models import TwoTower

    model = TwoTower(image=dict(variant="B/16", pool_type="tok"),
                     text=dict(vocab_size=49408, width=512, depth=12, mlp_dim=2048, num_heads=8, max_len=77),
                     embed_dim=512)
    batch = {"image": jax.ShapeDtypeStruct((1, 224, 224, 3), "float32"),
             "text": jax.ShapeDtypeStruct((1, 77), "int32")}
    parts = compute.model_forward(model, batch)
    gmacs = sum(parts.values()) / 2e9
    assert gmacs == pytest.approx(20.6, rel=0.02)
    assert compute.forward_gmacs_per_sample(model, batch) == gmacs  # what results.json reports
    length, d = 197, 768
    per_layer = 24 * length * d * d + 4 * length * length * d
    assert parts["image"] == pytest.approx(12 * per_layer + 2 * 768 * 512, rel=1e-12)


def test_mfu_is_flops_over_time_and_peak():
    """Fake clock: 20 steps of 3e9 FLOPs in 4 s on a 50 GFLOP/s peak is 30% MFU; the line shows it."""
    now = [100.0]
    out = io.StringIO()
    progress = Progress(100, 0, 32, stream=out, flops_per_step=3e9, peak_flops=50e9, clock=lambda: now[0])
    now[0] += 4.0
    timing = progress.update(20, {"loss": 1.0})
    assert timing["mfu"] == pytest.approx(20 * 3e9 / (4.0 * 50e9))
    assert timing["samples_per_sec"] == pytest.approx(20 * 32 / 4.0)
    assert timing["step_seconds"] == pytest.approx(0.2)
    assert "MFU 30.0%" in out.getvalue()
    now[0] += 1.0
    progress.update(30, {"loss": 1.0})  # 10 steps in 1 s: 60%
    assert progress.steady_mfu() == pytest.approx(0.6)  # the first line (compilation) is left out


def test_a_low_measured_peak_is_probed_again():
    """An interval faster than the measured peak (a probe taken under load) re-probes once and keeps the larger
    peak; intervals below it never re-probe."""
    now, probes = [0.0], []
    reprobe = lambda: probes.append(1) or 200e9  # noqa: E731
    progress = Progress(100, 0, 32, stream=io.StringIO(), flops_per_step=10e9, peak_flops=50e9,
                        clock=lambda: now[0], reprobe=reprobe)
    now[0] += 1.0
    timing = progress.update(10, {})  # 100 GFLOP/s achieved against a 50 GFLOP/s probe
    assert probes == [1] and progress.peak_flops == 200e9 and timing["mfu"] == pytest.approx(0.5)
    now[0] += 1.0
    assert progress.update(20, {})["mfu"] == pytest.approx(0.5) and probes == [1]
    low = Progress(100, 0, 32, stream=io.StringIO(), flops_per_step=10e9, peak_flops=500e9,
                   clock=lambda: now[0], reprobe=reprobe)
    now[0] += 1.0
    assert low.update(10, {})["mfu"] == pytest.approx(0.2) and probes == [1]


def test_peak_from_chip_table_or_probe():
    """TPU/GPU peaks add up per chip; host CPU devices of one process share one probe; processes add up."""
    class Dev:
        def __init__(self, kind, platform="tpu", process_index=0):
            self.device_kind, self.platform, self.process_index = kind, platform, process_index

    assert hardware.peak_flops([Dev("TPU v5 lite")] * 4) == pytest.approx(4 * 197e12)
    cpus = [Dev("cpu", "cpu", p) for p in (0, 0, 1, 1)]
    assert hardware.peak_flops(cpus, probe=lambda dtype: 1e11) == pytest.approx(2e11)
    assert hardware.peak_flops([Dev("mystery", "gpu")]) == 0.0


def test_matmul_probe_times_one_matmul():
    """The probe's FLOP/s is 2n³ over the best timed call (fake clock: every call takes 0.5 s)."""
    ticks = iter(range(100))
    rate = hardware.measure_matmul_flops("float32", n=64, reps=3, clock=lambda: 0.5 * next(ticks))
    assert rate == pytest.approx(2 * 64 ** 3 / 0.5)


def test_train_logs_mfu(tmp_path, data_dir):
    """Through train(): every progress record has mfu = flops_per_sec / peak with the run's FLOPs per step."""
    config = finalize_config(load_config("experiments/emoji_two_tower.py:size=test,steps=4"))
    config = apply_overrides(config, ONE_DEVICE + ["log_every=2", "peak_flops=1e9", "evals.sets=[]",
                                                   "checkpoint.every_steps=0", "progress=False"])
    out = train(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [2, 4]
    for r in train_records:
        assert r["flops_per_sec"] == pytest.approx(out["flops_per_step"] / r["step_seconds"])
        assert r["mfu"] == pytest.approx(r["flops_per_sec"] / 1e9)
    assert out["flops_per_step"] == step_flops(out["setup"]) > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_flops"] == 4 * out["flops_per_step"]
    assert results["samples_seen"] == 4 * config.batch_size  # the run on a compute axis (Cherti et al.'s C)
    assert results["train_gmacs"] == pytest.approx(results["forward_gmacs_per_sample"] * results["samples_seen"])
    patch = compute.model_forward(out["setup"].model, out["setup"].objective.init_batch(config.batch_size))
    assert 3 * results["forward_gmacs_per_sample"] * 2e9 * config.batch_size - patch.get("patch_embed", 0) == \
        pytest.approx(out["flops_per_step"])


def test_siglip2_charges_the_late_losses_only_in_their_phase(tmp_path, data_dir):
    """SigLIP 2 switches SILC and TIPS on at update round(0.5 · 4) = 2: steps 1–2 cost the SigLIP + LocCa step,
    steps 3–4 the step with every loss (each the analytic count of a config that runs that step throughout)."""
    def config(*more):
        c = finalize_config(load_config("experiments/emoji_siglip2.py:size=test,steps=4"))
        return apply_overrides(c, ONE_DEVICE + [
            "log_every=1", "peak_flops=1e9", "evals.sets=[]", "evals.probe_sets=[]", "evals.locca_sets=[]",
            "checkpoint.every_steps=0", "progress=False", "loss.distill_start=0.5", *more])

    out = train(config(), tmp_path)
    early = step_flops(Setup(config("loss.distill_weight=0.0", "loss.masked_weight=0.0")))
    late = step_flops(Setup(config("loss.distill_start=0.0")))
    assert late > 1.2 * early
    results = json.loads((tmp_path / "results.json").read_text())
    assert [tuple(p) for p in results["flop_phases"]] == [(0, pytest.approx(early)), (2, pytest.approx(late))]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    per_step = [r["flops_per_sec"] * r["step_seconds"] for r in records if r["split"] == "train"]
    assert per_step == pytest.approx([early, early, late, late])
    assert results["train_flops"] == pytest.approx(2 * early + 2 * late)
    assert out["flops_per_step"] == pytest.approx(early)
