"""Caption decoding speed and peak host memory, a baseline commit against the working tree, side by side in one run.

    scripts/vlm python benchmarks/decoding.py --baseline 74f219f --out benchmarks/decoding.md

Models: CoCa (experiments/emoji_coca.py:size=small) and PaLI (experiments/multitask_pali.py:size=small, prompt
"caption en"), random-initialised (`Setup(config).init_state(jax.random.key(0))`), greedy and beam-4 decoding of
a batch of random images through the objective's `caption_fns.generate_tokens`. The working tree computes the
cross-attention keys/values once per sequence at prefill (CONTEXT_CACHE, shared by the beams); the baseline
recomputed them from the whole image context at every step and for every beam row.

Every (code version, model, mode) measurement is a fresh subprocess (baseline: a `git worktree` of the commit
first on PYTHONPATH; checked through `vlm_jax.__file__`): one warm-up call (it compiles), then timed calls.
Peak memory is the subprocess's ru_maxrss (on CPU the device is the host). The EOS logit is pushed to -1e9
(decoder head bias) so no row stops early: every call runs all max_len steps, and tokens/s counts
images × max_len output tokens (for beam search the kept best beam's tokens, not the k beam rows).
The two versions' subprocesses start together, then alternate their timed calls (old, new, new, old, ...) so
both see the same machine load; medians. Also reported: the compiled generate function's XLA temp memory.

Observed when this was written (baseline 74f219f): XLA's while-loop invariant code motion already hoists the
baseline's per-step context key/value projection out of the decoding loop (its compiled greedy loop body has the
same matmuls as the working tree's), so greedy runs at ~1.0×; the beam gain is the per-image, not per-beam-row,
keys/values (4× fewer to compute once per call and to read at every step; less XLA temp memory).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_suffix(".md")
MODELS = {  # name: (config, prompt)
    "CoCa": ("experiments/emoji_coca.py:size=small", None),
    "PaLI": ("experiments/multitask_pali.py:size=small", "caption en"),
}
MODES = {"greedy": 1, "beam-4": 4}
EOS_BIAS = -1e9


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One (version, model, mode) measurement in this process: a warm-up call, then a timed call per "go" line."""
    import copy
    import resource

    import jax
    import numpy as np

    import vlm_jax
    from vlm_jax.config import load_config
    from vlm_jax.train.trainer import Setup, finalize_config

    config = load_config(spec["config"])
    config.evals.batch_size = spec["batch"]  # generate_tokens pads every chunk to evals.batch_size rows
    setup = Setup(finalize_config(config))
    state = setup.init_state(jax.random.key(0))
    fns = setup.objective.caption_fns
    eos = fns.ids["eos"]
    params = dict(state.params)
    head = dict(params["decoder"]["head"])
    head["bias"] = jax.device_put(head["bias"].at[eos].set(EOS_BIAS), head["bias"].sharding)
    params["decoder"] = dict(params["decoder"], head=head)
    k = spec["beam"]
    if hasattr(fns, "with_options"):  # the working tree: a copy with other decoding options
        fns = fns.with_options(beam_size=k)
    else:  # the baseline: beam_size is a plain attribute (part of the compiled function's key)
        fns = copy.copy(fns)
        fns.beam_size = k
    size = int(config.data.image_size)
    images = np.random.default_rng(0).uniform(-1, 1, (spec["batch"], size, size, 3)).astype(np.float32)
    t0 = time.perf_counter()
    out = fns.generate_tokens(params, images, spec["prompt"])  # warm-up: compiles
    warm_s = time.perf_counter() - t0
    try:  # the compiled generate function's scratch memory, lowered as generate_tokens calls it
        from vlm_jax.evals.embedder import mesh_of

        mesh, n = mesh_of(params), len(images)
        fn = fns._fn("generate", mesh)
        lowered = fn.lower(params, fns._put(images, mesh), fns._rows(fns.prompt_tokens(spec["prompt"], n), 0, n, n,
                                                                      mesh))
        temp_mib = lowered.compile().memory_analysis().temp_size_in_bytes / 2 ** 20
    except Exception:  # noqa: BLE001 - an extra, not the measurement
        temp_mib = float("nan")
    print(f"READY {warm_s}", flush=True)
    eos_rows = 0
    for line in sys.stdin:  # "go": one timed call; anything else: the summary
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        out = fns.generate_tokens(params, images, spec["prompt"])
        print(f"TIME {time.perf_counter() - t0}", flush=True)
        eos_rows = max(eos_rows, int(np.any(out == eos, axis=1).sum()))
    return dict(module=vlm_jax.__file__, tokens=int(out.size), max_len=fns.max_len, eos_rows=eos_rows,
                temp_mib=temp_mib, maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class Child:
    """A measurement subprocess with `tree`'s vlm_jax first on the path (cwd = tree), driven over stdin/stdout."""

    def __init__(self, tree: Path, spec: dict[str, Any]):
        env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   VLM_JAX_DATA_DIR=os.environ.get("VLM_JAX_DATA_DIR", str(ROOT / "data_cache")))
        self.tree, self.spec, self.log = tree, spec, tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                     env=env, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def read(self, tag: str) -> str:
        """The payload of the child's next stdout line starting with `tag` (other lines are skipped)."""
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:].strip()
        self.log.seek(0)
        raise RuntimeError(f"child {self.spec} in {self.tree} failed:\n{self.log.read()[-3000:]}")

    def call(self) -> float:
        """Seconds of one timed generate_tokens call."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.read("TIME"))

    def finish(self) -> dict[str, Any]:
        """The child's summary (it exits); checks that it imported vlm_jax from its tree."""
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        res = json.loads(self.read("RESULT"))
        self.proc.wait()
        if not Path(res["module"]).resolve().is_relative_to(self.tree.resolve()):
            raise RuntimeError(f"child meant for {self.tree} imported vlm_jax from {res['module']}")
        return res


def measure(trees: dict[str, Path], spec: dict[str, Any], calls: int) -> dict[str, dict[str, Any]]:
    """Both versions' children started together (set-up and warm-up overlap), then their timed calls
    alternated old, new, new, old, ...; per version the summary with its call times."""
    children = {v: Child(t, spec) for v, t in trees.items()}
    try:
        warm = {v: float(c.read("READY")) for v, c in children.items()}
        times: dict[str, list[float]] = {v: [] for v in children}
        for i in range(calls):
            for v in (("old", "new") if i % 2 == 0 else ("new", "old")):
                times[v].append(children[v].call())
        return {v: dict(c.finish(), times=times[v], warm_s=warm[v]) for v, c in children.items()}
    finally:
        for c in children.values():
            if c.proc.poll() is None:
                c.proc.kill()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def baseline_tree(commit: str) -> tuple[Path, bool]:
    """A worktree of `commit` (the existing /tmp/vlm_old when it is at that commit); True if created here."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    old = Path("/tmp/vlm_old")
    if old.is_dir() and subprocess.run(["git", "-C", str(old), "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip() == sha:
        return old, False
    tree = Path(tempfile.mkdtemp(prefix="vlm_baseline_")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True,
                   capture_output=True)
    return tree, True


def table(results: dict[tuple, dict[str, Any]]) -> list[str]:
    """Markdown rows: model, mode, tokens/s and peak MiB of both versions, speedup, XLA temp MiB."""
    lines = ["| model | mode | old tokens/s | new tokens/s | speedup (new/old) | old peak MiB | new peak MiB | "
             "old XLA temp MiB | new XLA temp MiB |", "|---|---|" + "---:|" * 7]
    for model in MODELS:
        for mode in MODES:
            old, new = results[("old", model, mode)], results[("new", model, mode)]
            rate = {v: r["tokens"] / statistics.median(r["times"]) for v, r in (("old", old), ("new", new))}
            lines.append(f"| {model} | {mode} | {rate['old']:,.0f} | {rate['new']:,.0f} | "
                         f"{rate['new'] / rate['old']:.2f}× | {old['maxrss_mib']:,.0f} | {new['maxrss_mib']:,.0f} | "
                         f"{old['temp_mib']:,.1f} | {new['temp_mib']:,.1f} |")
    return lines


def main() -> None:
    """Interleaved baseline/current measurements of every model and mode; prints and writes the table."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="74f219f", help="commit of the old code")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch", type=int, default=32, help="images per generate_tokens call")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per subprocess, after the warm-up")
    args = parser.parse_args()
    command = "scripts/vlm python benchmarks/decoding.py " + " ".join(sys.argv[1:])
    tree, created = baseline_tree(args.baseline)
    trees = {"old": tree, "new": ROOT}
    results: dict[tuple, dict[str, Any]] = {}
    start = time.perf_counter()
    try:
        for model, (config, prompt) in MODELS.items():
            for mode, beam in MODES.items():
                spec = dict(config=config, prompt=prompt, beam=beam, batch=args.batch)
                for version, res in measure(trees, spec, args.calls).items():
                    results[(version, model, mode)] = res
                    print(f"{version} {model} {mode}: median {statistics.median(res['times']):.3f} s/call "
                          f"({len(res['times'])} calls), warm-up {res['warm_s']:.1f} s, {res['maxrss_mib']:.0f} MiB, "
                          f"rows with EOS {res['eos_rows']}", flush=True)
    finally:
        if created:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    total = time.perf_counter() - start
    eos = sum(r["eos_rows"] for r in results.values())
    max_len = {m: results[("new", m, "greedy")]["max_len"] for m in MODELS}
    lines = [
        "# Caption decoding: cross-attention KV cache (current tree) vs recomputed context (baseline)", "",
        f"Generated {datetime.date.today()} by `{command}` in {total:.0f} s; CPU: {cpu_model()} "
        f"({os.cpu_count()} cores), XLA:CPU, the device is the host.", "",
        f"- old = commit {args.baseline} (a git worktree first on PYTHONPATH), new = the working tree. The numbers "
        "are ratios measured side by side on this shared machine (other work may have been running): compare "
        "old with new within a row, not with other machines or pages.",
        f"- Random-initialised small models, {args.batch} random images per call "
        f"(`caption_fns.generate_tokens`), max_len {', '.join(f'{m} {n}' for m, n in max_len.items())} "
        "(the data's text length). PaLI's prompt: \"caption en\". Beam search: beam size 4, length penalty 0.6.",
        f"- tokens/s = images × max_len / seconds per call: the EOS logit is set to {EOS_BIAS:g} (decoder head "
        "bias) so every row runs all max_len steps (rows that emitted EOS anyway, all runs: "
        f"{eos}). For beam-4 the count is the returned best beam's tokens, not the 4 beam rows decoded.",
        f"- tokens/s from the median of {args.calls} timed calls per cell. Per (model, mode) one fresh subprocess "
        "per version; the two start together (set-up and the warm-up call that compiles overlap), then their "
        "timed calls alternate old, new, new, old, ... so both see the same machine load.",
        "- peak MiB = ru_maxrss of the measurement's subprocess: imports, data tokenizer, parameters, compilation "
        "and decoding together, so mostly a fixed cost. XLA temp MiB = the compiled generate function's scratch "
        "buffers (`memory_analysis().temp_size_in_bytes`), the part the decoding itself allocates.",
        "- Why greedy is ~1.0× (checked in the compiled HLO against 74f219f): XLA's while-loop invariant code "
        "motion already hoisted the baseline's per-step context key/value projection out of the decoding loop, "
        "so its greedy loop body has the same matmuls as the KV cache's. Beam search gains because the "
        "keys/values are per image rather than per beam row (4× fewer to compute, hold and read).", "",
    ] + table(results)
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
