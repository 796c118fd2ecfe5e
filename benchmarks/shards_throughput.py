"""Shard input pipeline throughput and peak memory on this machine: webdataset and parquet shards through
`data/shards` against the prepared array_record emoji path, side by side in one run; and the JPEG decode alone.

    scripts/vlm python benchmarks/shards_throughput.py --out benchmarks/shards_throughput.md

Data: `python -m vlm_jax.tools.make_shards --dataset emoji --image_size 224 --max_examples 2000 --shard_size 500`
writes real JPEG shards (the 64 px emoji upscaled to 224 px) as wds tars and as parquet under --data (reused when
present). Pipeline rows: `shard_config.train_stream` with a `WebPreprocess` of `data/shards/dataset.py`'s settings
(image_size 224, augment CLIP_CROP, templates ("{}",), text_len 64, the emoji SentencePiece tokenizer), batch 256,
num_threads 0 (the 2-core default), worker_count 0 and 2; the array_record reference is
`data.base.get({name: emoji, image_size: 224, augment: CLIP_CROP, text_len: 64, templates: ("{}",)}).train(256, 0,
0, 1)` (64 px stored, resized to 224 at load). Each row is a fresh subprocess: one warm-up batch, then --batches
timed batches. Peak RSS: the row process's ru_maxrss; for worker rows also the workers' (each worker's VmHWM from
/proc just before the iterator closes; summed) and ru_maxrss of RUSAGE_CHILDREN after it closed (the largest
waited-for descendant; 0 when grain's workers are not our waited children).

Decode rows: `stream.decode_crop` (JPEG draft: DCT-scaled decode when the crop stays ≥ 224 px) against a full
PIL decode + the same crop + bicubic resize to 224, on the shards' 224 px JPEGs and on 640×480 JPEGs (the same
images upscaled, quality 90), CLIP_CROP crops, one image at a time.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_suffix(".md")
BATCH, TEXT_LEN, SIZE = 256, 64, 224
ROWS = ["wds w0", "wds w2", "parquet w0", "parquet w2", "array_record"]


def _data_dir() -> str:
    return os.environ.get("VLM_JAX_DATA_DIR", str(ROOT / "data_cache"))


def make_data(data: Path, n: int) -> None:
    for fmt in ("wds", "parquet"):
        out = data / fmt
        if out.is_dir() and any(out.glob("*.tar" if fmt == "wds" else "*.parquet")):
            continue
        subprocess.run([sys.executable, "-m", "vlm_jax.tools.make_shards", "--dataset", "emoji", "--format", fmt,
                        "--out", str(out), "--shard_size", "500", "--image_size", str(SIZE), "--max_examples",
                        str(n), "--overwrite"], check=True, cwd=ROOT)


def _descendants_hwm_kb() -> tuple[int, int]:
    """(count, summed VmHWM kB) of this process's live descendants."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {c for c, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    total = 0
    for pid in mine:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return len(mine), total


def run_row(row: str, data: Path, batches: int) -> dict:
    import ml_collections

    from vlm_jax.data import base, emoji_tfds
    from vlm_jax.data.shards import config as shard_config
    from vlm_jax.data.shards.dataset import CLIP_CROP
    from vlm_jax.data.tokenizer import Tokenizer

    if row == "array_record":
        ds = base.get(ml_collections.ConfigDict(dict(name="emoji", image_size=SIZE, text_len=TEXT_LEN,
                                                      augment=CLIP_CROP, templates=("{}",), num_threads=0)))
        stream = ds.train(BATCH, 0, 0, 1)
    else:
        fmt, workers = row.split()
        tok = Tokenizer(emoji_tfds.tokenizer_path(_data_dir(), 64, None))
        pattern = str(data / fmt / ("*.tar" if fmt == "wds" else "*.parquet"))
        cfg = shard_config.section(ml_collections.ConfigDict({"shards": dict(
            urls=pattern, format=fmt, caption="txt" if fmt == "wds" else "caption", worker_count=int(workers[1:]))}))
        pre = shard_config.WebPreprocess(lambda t: tok.encode(t, TEXT_LEN), SIZE, CLIP_CROP, ("{}",), fields=(),
                                         max_pixels=1 << 26)
        stream = shard_config.train_stream(cfg, str(data), pre, batch_size=BATCH, seed=0, process_index=0,
                                           process_count=1, num_threads=0)
    it = iter(stream)
    first = next(it)
    shape = tuple(first["image"].shape)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * BATCH / (time.perf_counter() - t)
    n_workers, workers_kb = _descendants_hwm_kb()
    del it, stream, first
    gc.collect()
    time.sleep(1.0)
    return dict(row=row, rate=rate, shape=shape, self_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                workers=n_workers, workers_mb=workers_kb / 1024,
                children_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def decode_rows(data: Path, n: int) -> list[tuple[str, float, float]]:
    from PIL import Image

    from vlm_jax.data import augment
    from vlm_jax.data.shards import config as shard_config
    from vlm_jax.data.shards.dataset import CLIP_CROP
    from vlm_jax.data.shards.stream import decode_crop

    cfg = shard_config.section({"shards": {"urls": str(data / "parquet" / "*.parquet"), "format": "parquet",
                                      "caption": "caption"}})
    reader = shard_config.readers(cfg, str(data))[0]
    small = [reader.read(0, i)["image"] for i in range(n)]
    big = []
    for b in small:
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(buf, "JPEG",
                                                                                                   quality=90)
        big.append(buf.getvalue())
    crop = CLIP_CROP["crop"]

    def full(b: bytes, rng: np.random.Generator) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            w, h = im.size
            p = augment.draw(rng, {"crop": crop}, (h, w))
            cw, ch = min(p[augment.P["w"]], w), min(p[augment.P["h"]], h)
            x0, y0 = min(max(p[augment.P["x0"]], 0.0), w - cw), min(max(p[augment.P["y0"]], 0.0), h - ch)
            return np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC,
                                                       box=(x0, y0, x0 + cw, y0 + ch)))

    def draft(b: bytes, rng: np.random.Generator) -> np.ndarray:
        return decode_crop(b, rng, crop, SIZE, 1 << 26)[0]

    rows = []
    for label, images in ((f"{SIZE}×{SIZE}", small), ("640×480", big)):
        kb = sum(map(len, images)) / len(images) / 1024
        for name, fn in (("decode_crop (JPEG draft)", draft), ("full PIL decode + crop + resize", full)):
            rng = np.random.default_rng(0)
            fn(images[0], rng)
            t = time.perf_counter()
            for b in images:
                assert fn(b, rng).shape == (SIZE, SIZE, 3)
            rows.append((f"{name}, {label} JPEG ({kb:.0f} KB)", len(images) / (time.perf_counter() - t), kb))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/tmp/shards_throughput", help="shard folder (written when absent)")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=3, help="timed batches per pipeline row (after one warm-up)")
    ap.add_argument("--decode_images", type=int, default=300)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process, print JSON
    args = ap.parse_args()
    data = Path(args.data)
    if args.row:
        from absl import flags

        flags.FLAGS.mark_as_parsed()
        print("ROW " + json.dumps(run_row(args.row, data, args.batches)), flush=True)
        return
    make_data(data, args.examples)
    results = []
    for row in ROWS:
        proc = subprocess.run([sys.executable, __file__, "--row", row, "--data", str(data), "--batches",
                               str(args.batches)], cwd=ROOT, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode or not line:
            sys.exit(f"row {row} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[0][4:]))
        print(results[-1], flush=True)
    decodes = decode_rows(data, args.decode_images)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    names = {"wds": "webdataset tars", "parquet": "parquet"}
    lines = [
        "# Shard input pipeline throughput",
        "",
        f"Regenerate: `scripts/vlm python benchmarks/shards_throughput.py --batches {args.batches} --out "
        f"{os.path.relpath(args.out, ROOT)}`  ",
        f"{datetime.date.today()}, {cpu}, {len(os.sched_getaffinity(0))} cores (shared). "
        f"{args.examples} emoji samples as 224 px JPEG shards (500 per shard); batch {BATCH}, image {SIZE}, text_len "
        f"{TEXT_LEN}, CLIP_CROP; one warm-up batch then {args.batches} timed batches per row, each row a fresh "
        f"process. See the module docstring for what each column measures.",
        "",
        "| path | samples/s | peak RSS main (MB) | workers: count, Σ peak RSS (MB) | RUSAGE_CHILDREN max (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["row"] == "array_record":
            name = "array_record (EmojiPairs, 64 px stored → 224), 0 threads"
        else:
            fmt, w = r["row"].split()
            name = f"{names[fmt]} → train_stream, worker_count {w[1:]}"
        lines.append(f"| {name} | {r['rate']:,.0f} | {r['self_mb']:,.0f} | {r['workers']}, {r['workers_mb']:,.0f} | "
                     f"{r['children_mb']:,.0f} |")
    lines += ["", f"Decode alone ({args.decode_images} images, one at a time, CLIP_CROP crop → {SIZE}×{SIZE}):", "",
              "| decode | images/s |", "|---|---:|"]
    lines += [f"| {name} | {rate:,.0f} |" for name, rate, _ in decodes]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
