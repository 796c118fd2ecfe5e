"""Resume safety: a checkpoint's saved config against the current one, and metric logs trimmed to the restore."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

# Keys that never change what is trained (logging, checkpointing, layout, evaluation; init_from acts only on a
# fresh start, which the checkpoint already holds): resumed silently. Every other change is run-changing; whether
# a change is structural (the checkpoint cannot be read under it) is decided from what the config produces: the
# train state's shapes and the tokenizer (`fingerprint`), not from key names.
NEUTRAL = ("log_every", "eval_every", "progress", "tensorboard", "nonfinite", "checkpoint.", "evals.", "mesh",
           "dcn_mesh", "sharding_rules", "fsdp_min_size", "fsdp_dims", "data.num_threads", "data.data_dir",
           "loss.impl", "loss.chunk_size", "init_from.")
# Fixed texts whose token ids stand for the tokenizer: any change of vocabulary, model file, text length or
# special ids changes them.
TOKENIZER_PROBES = ("an emoji of a red apple.", "Grinning face with big eyes", "flag: Norway", "1234567890 !?",
                    "übermäßig 東京 🙂", "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3)


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


def run_changing(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The changes that are not neutral."""
    return {k: v for k, v in changes.items() if not _matches(k, NEUTRAL)}


def state_signature(abstract_state: Any) -> dict[str, str]:
    """'path' → 'dtype[shape]' of every leaf of a train state (of ShapeDtypeStructs or arrays)."""
    import jax

    return {jax.tree_util.keystr(path): f"{leaf.dtype}{list(leaf.shape)}"
            for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)}


def tokenizer_fingerprint(tokenize: Callable[[list[str]], Any]) -> str | None:
    """sha256 of what `tokenize` makes of `TOKENIZER_PROBES` (token ids, or renders); None when it makes None."""
    import numpy as np

    out = tokenize(list(TOKENIZER_PROBES))
    if out is None:
        return None
    ids = np.ascontiguousarray(out)
    return hashlib.sha256(f"{ids.dtype}{ids.shape}".encode() + ids.tobytes()).hexdigest()


def fingerprint(signature: dict[str, str], tokenizer: str | None) -> dict[str, Any]:
    """What a checkpoint must match to be read and mean the same: the state's signature and the tokenizer's."""
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()
    return {"state": digest, "tokenizer": tokenizer, "leaves": signature}


def structural_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """How the saved fingerprint differs from the current one (empty when it does not, or is unknown)."""
    if not saved:
        return []
    out = []
    if saved.get("state") != current["state"]:
        old, new = saved.get("leaves", {}), current["leaves"]
        diff = [f"{k}: {old.get(k, 'absent')} → {new.get(k, 'absent')}" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]
        out.append(f"train state ({len(diff)} leaves differ: " + "; ".join(diff[:4])
                   + ("; …" if len(diff) > 4 else "") + ")")
    if saved.get("tokenizer") != current["tokenizer"]:
        out.append("tokenizer (the same texts give other token ids)")
    return out


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    """'key: old → new; …'."""
    return "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changes.items())


def check_resume(saved: str | None, current: str, step: int, allow_change: bool,
                 saved_print: dict[str, Any] | None = None,
                 current_print: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Raises unless resuming the checkpoint at `step` under `current` keeps the experiment; returns the
    run-changing differences that `allow_change` let through (to be logged). A different train-state structure
    or tokenizer (`fingerprint`) always raises."""
    if saved is None:
        return {}
    changes = config_changes(saved, current)
    structural = structural_differences(saved_print, current_print) if current_print else []
    if structural:
        raise ConfigMismatchError(
            f"The checkpoint at step {step} cannot be resumed under this config: it changes the "
            f"{' and the '.join(structural)}. Config changes: {_describe(changes) or 'none'}. "
            "Use a new --workdir for a new experiment.")
    run = run_changing(changes)
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
