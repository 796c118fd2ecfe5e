"""The SigLIP batch-size study (Zhai et al. 2023) as a pod sweep: SigLIP B/16 with the sigmoid loss and the softmax
(CLIP) baseline at batch 512 … 1M (the paper pushes the batch "up to one million" and finds 32k sufficient), equal
samples seen per point, on experiments/siglip_webli.py's setup.

  python -m vlm_jax.tools.plan experiments/sweeps/siglip_batch_study.py:data=synthetic \\
      --md docs/pod_plans/siglip_batch_study.md            each point dry-run on its slice, chip-hours
  python -m vlm_jax.tools.sweep "experiments/sweeps/siglip_batch_study.py:shards=URL" --dir gs://bucket/runs/bs print

Slices keep 256 examples per chip where the batch allows (4 chips at least): batch 512 on v5p-8 … 1M on v5p-8192,
so memory per chip stays comparable and the study's cost grows only through the loss's all-gather. Samples seen per
point: `samples` (default 9B, siglip_webli's default; the paper's per-point budgets are not restated here);
learning rate and schedule are siglip_webli's at every batch (no per-batch retuning).
"""
from vlm_jax.config import config_args

BATCHES = [512 * 2 ** k for k in range(12)]  # 512 … 1,048,576
PER_CHIP = 256


def _label(batch: int) -> str:
    return f"{batch >> 20}M" if batch >= 2 ** 20 else f"{batch >> 10}k" if batch >= 1024 else str(batch)


def _slice(batch: int) -> str:
    chips = max(4, batch // PER_CHIP)
    return f"v5p-{2 * chips}"  # v5p names count TensorCores, 2 per chip


def get_sweep(arg=None):
    """`arg`: data=synthetic (shapes only: dry runs and plans) or shards=URL; samples=N (seen per point)."""
    arg = config_args(arg, data="shards", shards="", samples=9e9)
    source = "data=synthetic" if arg.data == "synthetic" else f"shards={arg.shards}"
    if arg.data != "synthetic" and not arg.shards:
        raise ValueError("siglip_batch_study needs shards=URL, or data=synthetic for shapes only")
    return dict(
        base=f"experiments/siglip_webli.py:{source},samples={float(arg.samples):g}",
        axes=dict(loss={name: {"arg": f"loss={name}"} for name in ("sigmoid", "softmax")},
                  batch={_label(b): {"arg": f"batch={b}"} for b in BATCHES}),
        slices=[(f"loss-*_batch-{_label(b)}", _slice(b)) for b in BATCHES],
    )
