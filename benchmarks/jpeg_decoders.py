"""JPEG decoders for 224 px training crops, side by side: PIL full decode, PIL with DCT scaling (`draft`, what
`vlm_jax.data.shards.stream.decode_crop` does), and simplejpeg with DCT scaling (libjpeg-turbo through `min_width`/
`min_height`); each then crops a random-resized box (scale 0.9–1, open_clip's) and resizes it to 224 bicubic.

    bash benchmarks/setup_open_clip.sh        # .bench-venv has simplejpeg (and PIL through torchvision)
    .bench-venv/bin/python benchmarks/jpeg_decoders.py --out benchmarks/jpeg_decoders.md

Images: a photo-like test pattern (smooth gradients, edges and noise) encoded at quality 90 at each size.
"""
from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((224, 224), (500, 375), (640, 480), (1024, 768), (2048, 1536))
OUT = 224


def _image(w: int, h: int) -> bytes:
    rng = np.random.default_rng(w)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 90 + 128
    base += (xx > 0.5)[..., None] * 40 + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _box(rng: np.random.Generator, w: int, h: int) -> tuple[float, float, float, float]:
    s, r = rng.uniform(0.9, 1.0), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(w * math.sqrt(s * r), w), min(h * math.sqrt(s / r), h)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return x0, y0, cw, ch


def pil_full(data: bytes, box: tuple) -> np.ndarray:
    x0, y0, cw, ch = box
    im = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(im.resize((OUT, OUT), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch)))


def pil_draft(data: bytes, box: tuple) -> np.ndarray:
    x0, y0, cw, ch = box
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    im.draft("RGB", (math.ceil(w * OUT / cw), math.ceil(h * OUT / ch)))
    f = im.size[0] / w
    return np.asarray(im.convert("RGB").resize((OUT, OUT), Image.Resampling.BICUBIC,
                                               box=(x0 * f, y0 * f, (x0 + cw) * f, (y0 + ch) * f)))


def simplejpeg_scaled(data: bytes, box: tuple) -> np.ndarray:
    import simplejpeg

    x0, y0, cw, ch = box
    w, h = _header(data)
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=math.ceil(w * OUT / cw),
                                 min_height=math.ceil(h * OUT / ch))
    f = arr.shape[1] / w
    return np.asarray(Image.fromarray(arr).resize((OUT, OUT), Image.Resampling.BICUBIC,
                                                  box=(x0 * f, y0 * f, (x0 + cw) * f, (y0 + ch) * f)))


def _header(data: bytes) -> tuple[int, int]:
    import simplejpeg

    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    return w, h


def rate(fn, data: bytes, w: int, h: int, n: int) -> float:
    rng = np.random.default_rng(0)
    boxes = [_box(rng, w, h) for _ in range(n)]
    fn(data, boxes[0])
    start = time.perf_counter()
    for b in boxes:
        fn(data, b)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    import PIL
    import simplejpeg

    rows = []
    for w, h in SIZES:
        data = _image(w, h)
        r = {name: rate(fn, data, w, h, args.n) for name, fn in
             (("full", pil_full), ("draft", pil_draft), ("simplejpeg", simplejpeg_scaled))}
        diff = np.abs(pil_draft(data, (0, 0, w, h)).astype(float) - pil_full(data, (0, 0, w, h))).mean()
        rows.append(f"| {w}×{h} | {len(data) // 1024} | {r['full']:,.0f} | {r['draft']:,.0f} | "
                    f"{r['simplejpeg']:,.0f} | {r['draft'] / r['full']:.2f}× | {diff:.2f} |")
        print(rows[-1], flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    text = "\n".join([
        "# JPEG decode + 224 px random-resized crop, images/s (one core)", "",
        f"`.bench-venv/bin/python benchmarks/jpeg_decoders.py --n {args.n}` on {datetime.date.today()}, {cpu}; "
        f"Pillow {PIL.__version__}, simplejpeg {simplejpeg.__version__}; {args.n} crops per row after one warm-up.", "",
        "| image | KiB | PIL full decode | PIL draft (vlm_jax) | simplejpeg scaled | draft / full | mean abs diff draft vs full (whole image) |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
