"""Unifont text renderer throughput (CLIPPO text-as-image): captions per second on one CPU core.

Run: scripts/vlm python benchmarks/render_text.py   → prints and writes benchmarks/render_text.md
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from vlm_jax.data.render_text import TextRenderer, load_font, render_to_float

ENGLISH = [
    "A golden retriever catching a red frisbee in a park on a sunny afternoon.",
    "Two children building a sandcastle at the beach, waves in the background.",
    "Close-up of a bowl of ramen with a soft-boiled egg, green onions and nori.",
    "An old red tram crossing a bridge over the river at dusk, city lights on.",
    "Portrait of a woman in a yellow raincoat holding an umbrella on a rainy street.",
    "Aerial view of a winding mountain road through an autumn forest.",
    "A black and white cat sleeping on a stack of books next to a window.",
    "Vintage bicycle leaning against a brick wall covered in ivy.",
    "Chef slicing fresh salmon on a wooden cutting board in a busy kitchen.",
    "Snow-covered cabin in the woods with smoke rising from the chimney.",
    "Stock photo: happy business team celebrating success in a modern office, 4K",
    "Hand-drawn illustration of a hot air balloon floating over green hills",
]
KOREAN_CJK = [
    "해질녘 공원에서 빨간 원반을 잡는 골든 리트리버",
    "파도가 치는 해변에서 모래성을 쌓는 두 아이",
    "반숙 계란과 파, 김을 올린 라멘 한 그릇 클로즈업 사진",
    "비 오는 거리에서 노란 우비를 입고 우산을 든 여성의 초상",
    "눈 덮인 숲속 오두막과 굴뚝에서 피어오르는 연기",
    "창가 옆 책 더미 위에서 잠든 흑백 고양이",
    "黄昏时分，一辆旧红色电车驶过河上的桥，城市灯火通明。",
    "秋天的森林中蜿蜒的山路鸟瞰图",
    "厨师在繁忙的厨房里切新鲜的三文鱼",
    "雨の日の通りで黄色いレインコートを着た女性のポートレート",
    "古い自転車がツタに覆われたレンガの壁に立てかけられている",
    "서울 야경 (Seoul night view) 東京タワー 上海外滩",
]
LONG = [" ".join(ENGLISH[i:] + ENGLISH[:i]) for i in range(len(ENGLISH))]  # ~900 chars: fills a 224 image
SETS = {"English alt-text": ENGLISH, "Korean / CJK alt-text": KOREAN_CJK, "English, long (fills 224 px)": LONG}
SIZES = ((224, 16), (64, 16), (32, 16), (32, 8))  # (image px, font px): at 32 px a 16-px font is one line
BATCH, REPEATS = 256, 5


def _pin_one_core() -> str:
    """Pins this process to one CPU core where the OS allows it; returns a note for the table."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return "pinned to one core"
    return "not pinned"


def _rate(fn, captions: list[str]) -> float:
    """Captions per second of `fn` on batches of BATCH captions: best of REPEATS (after a warm-up)."""
    batch = [captions[i % len(captions)] for i in range(BATCH)]
    fn(batch)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - start)
    return BATCH / best


def _mean_chars(captions: list[str]) -> float:
    """Mean caption length in characters."""
    return float(np.mean([len(c) for c in captions]))


def main() -> None:
    pinned = _pin_one_core()
    start = time.perf_counter()
    load_font()
    TextRenderer()  # builds the code point and pixel tables
    setup_s = time.perf_counter() - start
    rows = []
    for name, captions in SETS.items():
        for size, font in SIZES:
            renderer = TextRenderer(image_size=size, font_size=font)
            rate = _rate(renderer.render_batch, captions)
            rows.append((name, _mean_chars(captions), size, font, "uint8", rate))
    for name in ("English alt-text", "Korean / CJK alt-text"):
        rows.append((name, _mean_chars(SETS[name]), 224, 16, "float32 [-1, 1]",
                     _rate(lambda b: render_to_float(b, 224), SETS[name])))
    table = ["| captions | mean chars | image px | font px | output | captions/s | µs/caption |",
             "|---|---:|---:|---:|---|---:|---:|"]
    table += [f"| {n} | {c:.0f} | {s} | {f} | {o} | {r:,.0f} | {1e6 / r:,.0f} |" for n, c, s, f, o, r in rows]
    text = (f"# Unifont text renderer throughput (CPU, {pinned})\n\n"
            f"`vlm_jax.data.render_text.TextRenderer.render_batch`, batches of {BATCH} captions (output array "
            f"allocation included), best of {REPEATS} after a warm-up; {platform.processor() or platform.machine()}, "
            f"NumPy {np.__version__}. One-off font parse and table build: {setup_s:.1f} s.\n"
            "Measured on a shared 2-core machine with other jobs running: numbers are a lower bound.\n\n"
            + "\n".join(table) + "\n")
    print(text)
    Path(__file__).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
