"""Start a run from another run's weights (`config.init_from`): e.g. an MAE or CLIP image tower for a contrastive
or locked-image run. Selected source arrays replace the fresh ones at the same (or renamed) path; the rest keep
their initialisation."""
from __future__ import annotations

import re
from typing import Any

import flax.traverse_util as traverse
import jax
import ml_collections
import numpy as np

DEFAULTS = dict(workdir="", pretrained="", step=0, include=".*", rename=[], more=[])
# workdir: the source run; or pretrained: packaged weights by name (vlm_jax.pretrained.PRETRAINED, e.g. "minilm",
# whose paths are the bare tower's: "layer_0/query/kernel", …); step: the run's checkpoint (0: newest readable);
# include: regex on source parameter paths ("img/…", "txt/…", "t") selecting what to copy; rename: [source prefix,
# destination prefix] pairs applied to the selected paths (e.g. [("", "txt/")] puts MiniLM into the text tower);
# more: further sources, each a dict of the keys above but `more` (e.g. a frozen LM beside a stage-1 Q-Former run);
# no two sources may fill the same parameter.


class InitFromError(ValueError):
    """The source run's parameters do not fit this run's model."""


def _flat(tree: Any) -> dict[str, Any]:
    return traverse.flatten_dict(tree, sep="/")


def _names_source(init: Any) -> bool:
    if init.get("workdir") and init.get("pretrained"):
        raise InitFromError("set init_from.workdir or init_from.pretrained, not both")
    return bool(init.get("workdir") or init.get("pretrained"))


def sources(init: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The sources `init` names, in order: the section's own (if any), then each of `init.more` (keys checked)."""
    from vlm_jax.config import check_keys

    out = [init] if _names_source(init) else []
    for i, extra in enumerate(init.get("more", []) or []):
        extra = dict(extra)
        check_keys(extra, {k: v for k, v in DEFAULTS.items() if k != "more"}, f"init_from.more[{i}]")
        section = ml_collections.ConfigDict({**{k: v for k, v in DEFAULTS.items() if k != "more"}, **extra})
        if not _names_source(section):
            raise InitFromError(f"init_from.more[{i}] names no source: set its workdir or pretrained")
        out.append(section)
    return out


def active(init: ml_collections.ConfigDict) -> bool:
    """Whether `init` names a source (a run or pretrained weights; not both, per source)."""
    return bool(sources(init))


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _renamed(path: str, rename: list[tuple[str, str]]) -> str:
    for src, dst in rename:
        if path.startswith(src):
            return dst + path[len(src):]
    return path


def select(source: dict[str, Any], target: dict[str, Any], include: str,
           rename: list[tuple[str, str]]) -> dict[str, str]:
    """{destination path: source path} of the source arrays `include` selects; raises when nothing is selected, a
    selected array has no destination, or shapes differ."""
    pattern = re.compile(include)
    chosen = {_renamed(p, rename): p for p in source if pattern.search(p)}
    if not chosen:
        raise InitFromError(f"init_from.include={include!r} selects no parameter of the source run; its top-level "
                            f"names: {sorted({p.split('/')[0] for p in source})}")
    missing = sorted(d for d in chosen if d not in target)
    if missing:
        raise InitFromError(f"{len(missing)} selected source arrays have no place in this model, e.g. {missing[:4]}; "
                            f"narrow init_from.include or set init_from.rename. This model's top-level names: "
                            f"{sorted({p.split('/')[0] for p in target})}")
    for dst, src in chosen.items():
        if _shape(source[src]) != _shape(target[dst]):
            raise InitFromError(f"shape of {src} in the source {_shape(source[src])} differs from {dst} here "
                                f"{_shape(target[dst])}")
    return chosen


def merge(params: Any, source: Any, include: str = ".*",
          rename: list[tuple[str, str]] | tuple = ()) -> tuple[Any, dict[str, Any]]:
    """`params` with the selected `source` arrays in place (with the dtype and sharding of the arrays they replace),
    and a report of what moved."""
    flat, src = _flat(params), _flat(source)
    chosen = select(src, flat, include, [tuple(r) for r in rename])
    out = dict(flat)
    for dst, path in chosen.items():
        like = flat[dst]
        value = np.asarray(src[path], dtype=like.dtype)
        out[dst] = jax.device_put(value, like.sharding) if isinstance(like, jax.Array) else value
    fresh = sorted(p for p in flat if p not in chosen)
    report = {"copied": len(chosen), "copied_params": int(sum(np.size(src[p]) for p in chosen.values())),
              "fresh": fresh, "copied_paths": sorted(chosen), "all_paths": sorted(flat)}
    return traverse.unflatten_dict(out, sep="/"), report


def summarize(paths: list[str], depth: int = 2) -> str:
    """Paths grouped by their first `depth` components, with counts: "img/MAPHead_0 (12), t"."""
    groups: dict[str, int] = {}
    for p in paths:
        key = "/".join(p.split("/")[:depth])
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(k if n == 1 and k in paths else f"{k} ({n})" for k, n in groups.items())


def load_source(init: ml_collections.ConfigDict) -> tuple[Any, str]:
    """(host parameters, description) of the source: a run's checkpoint read on this machine's devices, or
    packaged pretrained weights."""
    if init.get("pretrained"):
        from vlm_jax.pretrained import PRETRAINED

        if init.pretrained not in PRETRAINED:
            raise InitFromError(f"init_from.pretrained must be one of {sorted(PRETRAINED)}, got {init.pretrained!r}")
        _, flat = PRETRAINED[init.pretrained]()
        return traverse.unflatten_dict(flat, sep="/"), f"pretrained {init.pretrained}"
    from vlm_jax.train.workdir import restore_run

    _, params, step = restore_run(init.workdir, int(init.get("step", 0)) or None, mesh=[("data", -1)])
    return jax.device_get(params), f"{init.workdir} (step {step})"
