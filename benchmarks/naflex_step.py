"""NaFlex vs fixed resolution at equal tokens: train-step time and compiled memory, side by side in one process.

    scripts/vlm python benchmarks/naflex_step.py            → prints and writes benchmarks/naflex_step.md

For each sequence length N (patches per image) two SigLIP two-tower setups with the same parameters
(`experiments/two_tower_scale.py:variant=Ti/16`, float32 on CPU, no remat): fixed resolution at 16·√N px squares,
and NaFlex at budget N (random aspect ratios from the synthetic stream, so some of the N slots are padding). Each
setup takes one batch from its own data pipeline, compiles, warms up, then their timed steps alternate (fixed,
NaFlex, NaFlex, fixed, ...) so both see the same machine load; medians. Memory: the compiled train step's
temporary buffers (`memory_analysis().temp_size_in_bytes`) and its arguments (state + batch).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from vlm_jax import sharding as shd
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.data import robust
from vlm_jax.train.trainer import Setup, finalize_config

OUT = Path(__file__).with_suffix(".md")
BASE = "experiments/two_tower_scale.py:variant=Ti/16,loss=siglip,batch={batch},res={res},remat=none,fsdp=1{naflex}"
OVERRIDES = ["data.text_len=16", "model.text.max_len=16", "model.text.depth=2",
             "model.image.dtype_mm=float32", "model.text.dtype_mm=float32",
             "model.image.residual_dtype=float32", "model.text.residual_dtype=float32"]


class Runner:
    """One setup, its fixed batch, state and compiled step."""

    def __init__(self, spec: str):
        self.spec = spec
        self.setup = Setup(apply_overrides(finalize_config(load_config(spec)), OVERRIDES))
        it = iter(self.setup.objective.train_data(self.setup.config.batch_size, 0, 0, 1))
        host = dict(next(it))
        del it
        robust.pop_counts(host)
        image = host["image"]
        self.filled = float(np.mean(image["mask"])) if isinstance(image, dict) else 1.0
        self.tokens = image["patches"].shape[1] if isinstance(image, dict) else None
        self.batch = shd.global_batch(host, self.setup.batch_sharding)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.batch)
        mem = self.setup.train_step.lower(self.setup.abstract_state(), abstract).compile().memory_analysis()
        self.temp_mib = mem.temp_size_in_bytes / 2 ** 20
        self.args_mib = mem.argument_size_in_bytes / 2 ** 20
        self.state = self.setup.init_state(jax.random.key(0))

    def step(self) -> float:
        """Seconds of one train step."""
        t0 = time.perf_counter()
        self.state, metrics = self.setup.train_step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0


def measure(tokens: int, batch: int, warmup: int, steps: int) -> dict[str, dict]:
    """Fixed and NaFlex at `tokens` patches per image: step times (alternated) and memory."""
    res = 16 * int(round(tokens ** 0.5))
    runners = {"fixed": Runner(BASE.format(batch=batch, res=res, naflex="")),
               "naflex": Runner(BASE.format(batch=batch, res=res, naflex=f",naflex={tokens}"))}
    for r in runners.values():
        for _ in range(warmup):
            r.step()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(steps):
        for k in (("fixed", "naflex") if i % 2 == 0 else ("naflex", "fixed")):
            times[k].append(runners[k].step())
    return {k: dict(s=statistics.median(times[k]), times=times[k], temp=r.temp_mib, args=r.args_mib,
                    filled=r.filled, res=res, spec=r.spec) for k, r in runners.items()}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    """Runs each sequence length; prints and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="64,256", help="patches per image, comma-separated (squares)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setup")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    command = "scripts/vlm python benchmarks/naflex_step.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        r = measure(n, args.batch, args.warmup, args.steps)
        print(f"{n} tokens: " + ", ".join(f"{k} {[round(t, 3) for t in v['times']]} s, temp {v['temp']:.0f} MiB"
                                         for k, v in r.items()), flush=True)
        rows.append((n, r))
    total = time.perf_counter() - start
    lines = [
        "# NaFlex vs fixed resolution at equal tokens: train step time and memory", "",
        f"Generated {datetime.date.today()} by `{command}` in {total:.0f} s; CPU: {cpu_model()} "
        f"({os.cpu_count()} cores), XLA:CPU, one device.", "",
        f"- `{BASE.format(batch=args.batch, res='16·√N', naflex='[,naflex=N]')}` with `{' '.join(OVERRIDES)}`: "
        "the same parameters in both columns (NaFlex resizes the (res/16)² position table per image).",
        "- Fixed: N patches from 16·√N px squares. NaFlex: a budget of N slots; synthetic images of aspect ratio "
        "log-uniform in [1/3, 3] take the largest grid that fits, the rest is padding (\"filled\": the mean mask).",
        f"- s/step: median of {args.steps} timed `train_step` calls per setup after {args.warmup} warm-up steps, "
        "the two setups alternating in one process. Ratios measured side by side; compare columns, not machines.",
        "- temp MiB: the compiled step's temporary buffers; args MiB: its arguments (train state + batch).", "",
        "| tokens N | batch | fixed s/step | NaFlex s/step | NaFlex / fixed | NaFlex filled | fixed temp MiB "
        "| NaFlex temp MiB | fixed args MiB | NaFlex args MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows:
        f, x = r["fixed"], r["naflex"]
        lines.append(f"| {n} | {args.batch} | {f['s']:.3f} | {x['s']:.3f} | {x['s'] / f['s']:.2f} | "
                     f"{x['filled']:.0%} | {f['temp']:,.1f} | {x['temp']:,.1f} | {f['args']:,.1f} | {x['args']:,.1f} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
