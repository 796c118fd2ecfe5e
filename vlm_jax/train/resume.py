"""Resume safety: a checkpoint's saved config against the current one, and metric logs trimmed to the restore."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Keys that never change what is trained (logging, checkpointing, layout, evaluation; init_from acts only on a
# fresh start, which the checkpoint already holds): resumed silently.
NEUTRAL = ("log_every", "eval_every", "progress", "tensorboard", "nonfinite", "checkpoint.", "evals.", "mesh",
           "dcn_mesh", "sharding_rules", "fsdp_min_size", "fsdp_dims", "data.num_threads", "data.data_dir",
           "loss.impl", "loss.chunk_size", "loss.grad_cache", "init_from.")
# Keys that change the shapes or structure of the saved state: the checkpoint cannot be restored under them.
STRUCTURAL = ("objective", "model.", "data.name", "data.image_size", "data.text_len", "data.text_format",
              "data.text_image_size", "data.max_concepts", "data.tokenizer", "optim.name", "optim.freeze",
              "optim.lr_mults")
# Optimizer stages present only when non-zero: switching one on or off changes the optimizer state's structure.
_TOGGLES = ("optim.weight_decay", "optim.clip_norm", "optim.momentum")


class ConfigMismatchError(ValueError):
    """The run's config differs from the one its checkpoint was written with."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {"a.b.c": leaf}."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether `key` equals a pattern or lies under one ending in '.'."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def config_changes(saved: str | dict, current: str | dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs (as JSON), with (saved, current) values."""
    saved = _flatten(json.loads(saved) if isinstance(saved, str) else saved)
    current = _flatten(json.loads(current) if isinstance(current, str) else current)
    missing = object()
    return {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
            if saved.get(k, missing) != current.get(k, missing)}


def classify(changes: dict[str, tuple[Any, Any]]) -> tuple[dict, dict]:
    """(structural, run-changing) changes; neutral ones are dropped."""
    structural, run = {}, {}
    for key, (old, new) in changes.items():
        if _matches(key, NEUTRAL):
            continue
        toggled = key in _TOGGLES and bool(old) != bool(new)
        (structural if toggled or _matches(key, STRUCTURAL) else run)[key] = (old, new)
    return structural, run


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    """'key: old → new; …'."""
    return "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changes.items())


def check_resume(saved: str | None, current: str, step: int, allow_change: bool) -> dict[str, tuple[Any, Any]]:
    """Raises unless resuming the checkpoint at `step` under `current` keeps the experiment; returns the
    run-changing differences that `allow_change` let through (to be logged)."""
    if saved is None:
        return {}
    structural, run = classify(config_changes(saved, current))
    if structural:
        raise ConfigMismatchError(
            f"The checkpoint at step {step} was written with a different model/data/optimizer structure and "
            f"cannot be resumed: {_describe(structural)}. Use a new --workdir for a new experiment.")
    if run and not allow_change:
        raise ConfigMismatchError(
            f"The checkpoint at step {step} was written with another config: {_describe(run)}. Resuming would "
            "silently change the experiment; pass --allow_config_change to resume anyway (the change is logged), "
            "or use a new --workdir.")
    return run


def trim_jsonl(path: str | Path, last_step: int) -> int:
    """Atomically drops records with step > `last_step` (logged after the restored checkpoint); returns how many."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= last_step]
    if len(keep) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return len(lines) - len(keep)
