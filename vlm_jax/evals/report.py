"""Results table: every model number beside the raw-pixel baseline and chance (and other baselines a task has,
e.g. "copy": a translation task's input unchanged)."""
from __future__ import annotations

from typing import Mapping

WHO = ("model", "pixel", "chance")
# further baseline columns, shown when some result has them: "copy" (a translation task's input unchanged), "mean"
# (MAE: each hidden patch predicted by its own mean), "unigram" (a language model's: training token frequencies)
EXTRA = ("copy", "mean", "unigram")
RAW = ("mse", "perplexity", "nll")  # metrics printed as numbers, not percent


def rows(results: Mapping[str, float]) -> list[tuple[str, str, str, dict[str, float]]]:
    """(eval set, subset, metric, {model, pixel, chance}) for each metric the model reports."""
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for key, value in results.items():
        parts = key.split("/")
        if len(parts) < 4 or parts[-1] not in WHO + EXTRA:
            continue
        *set_parts, subset, metric, who = parts
        table.setdefault(("/".join(set_parts), subset, metric), {})[who] = value
    return [(s, sub, m, v) for (s, sub, m), v in table.items() if "model" in v]


def _pct(value: float | None, metric: str = "") -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if metric in RAW else f"{100 * value:.1f}"


def format_results(results: Mapping[str, float], title: str = "") -> str:
    """Markdown table of all evaluated metrics (percent, except the RAW metrics)."""
    lines = [f"### {title}", ""] if title else []
    table = rows(results)
    extra = [w for w in EXTRA if any(w in v for *_, v in table)]
    lines += ["| eval set | subset | metric | model % | pixel NN % | chance % |" + "".join(f" {w} % |" for w in extra),
              "|---|---|---|---:|---:|---:|" + "---:|" * len(extra)]
    for set_name, subset, metric, v in table:
        pct = lambda who: _pct(v.get(who), metric)  # noqa: E731
        lines.append(f"| {set_name} | {subset} | {metric} | {pct('model')} | {pct('pixel')} | {pct('chance')} |"
                     + "".join(f" {pct(w)} |" for w in extra))
    return "\n".join(lines)


def compare(runs: dict[str, Mapping[str, float]], subsets: tuple[str, ...] = ("flag", "nonflag")) -> str:
    """Markdown table of several runs side by side (percent), with the pixel baseline and chance; a metric only
    some runs report is blank for the others."""
    first: dict[str, float] = {}
    for r in runs.values():  # every metric any run reports, in order of first appearance; baselines from the first
        first.update({k: v for k, v in r.items() if k not in first})
    keys = [(s, sub, m) for s, sub, m, _ in rows(first) if sub in subsets or not s.endswith(("cross", "unseen"))]
    head = "| eval set | subset | metric | " + " | ".join(runs) + " | pixel NN | chance |"
    lines = [head, "|---|---|---|" + "---:|" * (len(runs) + 2)]
    for s, sub, m in keys:
        base = f"{s}/{sub}/{m}"
        vals = [_pct(r.get(f"{base}/model"), m) for r in runs.values()]
        lines.append(f"| {s.removeprefix('zeroshot/')} | {sub} | {m} | " + " | ".join(vals) +
                     f" | {_pct(first.get(f'{base}/pixel'), m)} | {_pct(first.get(f'{base}/chance'), m)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    # python -m vlm_jax.evals.report NAME=runs/dir [NAME=runs/dir/evals_stepN.json ...]: a workdir's results.json,
    # or a tools.evaluate re-evaluation
    named = dict(arg.split("=", 1) for arg in sys.argv[1:])

    def metrics(path: str) -> dict[str, float]:
        p = Path(path)
        return json.loads(p.read_text()) if p.is_file() else json.loads((p / "results.json").read_text())["evals"]

    print(compare({n: metrics(d) for n, d in named.items()}))
