"""Results table: every model number beside the raw-pixel baseline and chance."""
from __future__ import annotations

from typing import Mapping

WHO = ("model", "pixel", "chance")


def rows(results: Mapping[str, float]) -> list[tuple[str, str, str, dict[str, float]]]:
    """(eval set, subset, metric, {model, pixel, chance}) for each metric the model reports."""
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for key, value in results.items():
        parts = key.split("/")
        if len(parts) < 4 or parts[-1] not in WHO:
            continue
        *set_parts, subset, metric, who = parts
        table.setdefault(("/".join(set_parts), subset, metric), {})[who] = value
    return [(s, sub, m, v) for (s, sub, m), v in table.items() if "model" in v]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def format_results(results: Mapping[str, float], title: str = "") -> str:
    """Markdown table of all evaluated metrics (percent)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| eval set | subset | metric | model % | pixel NN % | chance % |", "|---|---|---|---:|---:|---:|"]
    for set_name, subset, metric, v in rows(results):
        lines.append(f"| {set_name} | {subset} | {metric} | {_pct(v.get('model'))} | {_pct(v.get('pixel'))} | "
                     f"{_pct(v.get('chance'))} |")
    return "\n".join(lines)
