"""The webdataset input pipeline against open_clip's own, side by side in one run on the same shards and worker
counts: samples/s and peak memory of 224 px training batches.

    bash benchmarks/setup_open_clip.sh          # once: torch, open_clip, webdataset in .bench-venv
    scripts/vlm python benchmarks/shards_vs_open_clip.py --out benchmarks/shards_vs_open_clip.md

Shards: `make_shards --dataset emoji --format wds --image_size 224 --shard_size 500` (all 5,020 training examples
as 224 px JPEG, 11 tars; reused when present in --data). open_clip: `open_clip_train.data.get_wds_dataset` (its
training loader: shard shuffle, split by worker, tar reading, 5,000-sample shuffle buffer, PIL decode,
`open_clip.image_transform(224, is_train=True)` = RandomResizedCrop(scale 0.9–1, bicubic) + ToTensor +
Normalize, CLIP BPE tokenizer, batches of 256, `wds.WebLoader` with `workers` processes). vlm_jax:
`data/shards` with `data/shards/dataset.py`'s crop (the same scale 0.9–1, bicubic), uint8 images (mapped to
[-1, 1] by the train step, on the device), the emoji SentencePiece tokenizer (64 tokens), global shuffle order,
batches of 256, `worker_count` grain processes (0: in the training process). Each run: a fresh process, one
warm-up batch, then --batches timed batches (open_clip's epochs restart as its loader defines them). Peak memory:
the run process's max RSS plus its live descendants' (VmHWM summed; shared pages counted in each).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH, SIZE = 256, 224
BENCH_PY = ROOT / ".bench-venv" / "bin" / "python"
sys.path.insert(0, str(Path(__file__).parent))


def _peak_mb() -> float:
    from shards_throughput import _descendants_hwm_kb

    _, children = _descendants_hwm_kb()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + children) / 1024


def _time(batches: Any, n: int) -> dict[str, float]:
    """samples/s over n batches after one warm-up, and peak memory."""
    next(batches)
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    seconds = time.perf_counter() - start
    return {"samples_per_s": n * BATCH / seconds, "peak_mb": _peak_mb()}


def run_open_clip(shards: str, workers: int, n: int) -> dict[str, float]:
    import argparse as ap

    import open_clip
    from open_clip_train.data import get_wds_dataset

    urls = sorted(str(p) for p in Path(shards).glob("*.tar"))
    args = ap.Namespace(train_data="::".join(urls), val_data=None, train_num_samples=5020, dataset_resampled=False,
                        seed=0, batch_size=BATCH, workers=workers, world_size=1, train_data_upsampling_factors=None)
    info = get_wds_dataset(args, open_clip.image_transform(SIZE, is_train=True), True,
                           tokenizer=open_clip.get_tokenizer("ViT-B-32"))

    def endless():
        epoch = 0
        while True:
            info.set_epoch(epoch)
            yield from info.dataloader
            epoch += 1
    return _time(endless(), n)


def run_vlm(shards: str, workers: int, n: int) -> dict[str, float]:
    import ml_collections
    from absl import flags

    from vlm_jax.data import emoji_tfds
    from vlm_jax.data.shards import config as shard_config
    from vlm_jax.data.shards.dataset import CLIP_CROP
    from vlm_jax.data.tokenizer import Tokenizer

    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    data_dir = os.environ.get("VLM_JAX_DATA_DIR", str(ROOT / "data_cache"))
    tok = Tokenizer(emoji_tfds.tokenizer_path(data_dir, 64, None))
    cfg = shard_config.section(ml_collections.ConfigDict(dict(shards=dict(
        urls=str(Path(shards) / "*.tar"), chunk=1, window=1, worker_count=workers))))
    pre = shard_config.WebPreprocess(lambda t: tok.encode(t, 64), SIZE, CLIP_CROP, ["{}"], (), 1 << 28)
    stream = shard_config.train_stream(cfg, data_dir, pre, batch_size=BATCH, seed=0, process_index=0,
                                       process_count=1, num_threads=0)
    return _time(iter(stream), n)


def make_shards(out: Path) -> None:
    if out.is_dir() and any(out.glob("*.tar")):
        return
    subprocess.run([sys.executable, "-m", "vlm_jax.tools.make_shards", "--dataset", "emoji", "--format", "wds",
                    "--out", str(out), "--shard_size", "500", "--image_size", str(SIZE), "--overwrite"],
                   check=True, cwd=ROOT)


def _row(python: Path, kind: str, shards: Path, workers: int, n: int) -> dict[str, float]:
    out = subprocess.run([str(python), __file__, "--_row", kind, "--data", str(shards), "--workers", str(workers),
                          "--batches", str(n)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} w{workers} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/shards_vs_open_clip/wds224")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per pipeline and worker count")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    parser.add_argument("--_row", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._row:
        fn = run_open_clip if args._row == "open_clip" else run_vlm
        print(json.dumps(fn(args.data, int(args.workers), args.batches)))
        return
    if not BENCH_PY.exists():
        raise SystemExit("no .bench-venv: run `bash benchmarks/setup_open_clip.sh` first")
    data = Path(args.data)
    make_shards(data)
    lines = []
    for w in (int(x) for x in args.workers.split(",")):
        runs: dict[str, list[dict[str, float]]] = {"vlm": [], "open_clip": []}
        for _ in range(args.repeats):  # alternating, so drifts in machine load hit both
            runs["vlm"].append(_row(Path(sys.executable), "vlm", data, w, args.batches))
            runs["open_clip"].append(_row(BENCH_PY, "open_clip", data, w, args.batches))
        rate = {k: sorted(r["samples_per_s"] for r in v) for k, v in runs.items()}
        med = {k: statistics.median(v) for k, v in rate.items()}
        peak = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
        spread = lambda v: f"{statistics.median(v):,.0f} ({v[0]:,.0f}–{v[-1]:,.0f})"  # noqa: E731
        lines.append(f"| {w} | {spread(rate['vlm'])} | {spread(rate['open_clip'])} | "
                     f"{med['vlm'] / med['open_clip']:.2f}× | {peak['vlm']:,.0f} | {peak['open_clip']:,.0f} |")
        print(lines[-1], flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    text = "\n".join([
        "# Webdataset input pipeline: vlm_jax vs open_clip (224 px training batches)", "",
        f"`scripts/vlm python benchmarks/shards_vs_open_clip.py --workers {args.workers} --batches {args.batches} "
        f"--repeats {args.repeats}` on {datetime.date.today()}, {cpu}, {len(os.sched_getaffinity(0))} cores; the same "
        f"11 tars (5,020 emoji at 224 px JPEG), batch {BATCH}, {args.batches} timed batches after one warm-up, each "
        f"run a fresh process, {args.repeats} runs per cell alternating between the pipelines: median (min–max), "
        "ratio of medians, peak memory the largest of the runs (see the script's docstring for both pipelines). "
        "vlm_jax's batches carry uint8 images that the train step normalises on the device; open_clip's carry "
        "normalised float32 tensors, as its loader makes them.", "",
        "| workers | vlm_jax samples/s | open_clip samples/s | ratio | vlm_jax peak MB | open_clip peak MB |",
        "|---:|---:|---:|---:|---:|---:|", *lines, ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
