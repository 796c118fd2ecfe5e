"""Config files (`get_config(arg)`), command-line overrides and validation with helpful errors."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterable

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


def parse_arg(arg: str | None) -> Any:
    """`variant=B/16,lr=1e-3` → ConfigDict; a bare string stays a string."""
    if not arg:
        return None
    if "=" not in arg:
        return arg
    out = ConfigDict()
    for part in arg.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = _literal(value.strip())
    return out


def _literal(text: str) -> Any:
    """Parses a Python literal, falling back to the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(spec: str) -> ConfigDict:
    """Loads `path/to/file.py[:arg]` by calling its `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file not found: {path}")
    name = f"_vlm_jax_config_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg)")
    parsed = parse_arg(arg)
    config = module.get_config(parsed) if parsed is not None else module.get_config()
    return config


def _describe_valid(node: ConfigDict, prefix: str) -> str:
    """Lists the keys valid at one level of a config."""
    keys = sorted(node.keys())
    return f"valid keys under '{prefix or '<root>'}': {', '.join(keys)}"


def _lookup_parent(config: ConfigDict, dotted: str) -> tuple[ConfigDict, str]:
    """Returns (parent node, leaf key) for a dotted key, raising if a part is unknown."""
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[:i])
        if not isinstance(node, ConfigDict) or part not in node:
            raise unknown_key_error(dotted, node, prefix)
        node = node[part]
    if not isinstance(node, ConfigDict) or parts[-1] not in node:
        raise unknown_key_error(dotted, node, ".".join(parts[:-1]))
    return node, parts[-1]


def unknown_key_error(key: str, node: Any, prefix: str) -> ConfigError:
    """An error naming the valid keys and the closest match."""
    if not isinstance(node, ConfigDict):
        return ConfigError(f"Unknown config key '{key}': '{prefix}' is not a section")
    close = difflib.get_close_matches(key.split(".")[-1], list(node.keys()), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"Unknown config key '{key}'.{hint} {_describe_valid(node, prefix)}")


def check_keys(section: Any, valid: Iterable[str], prefix: str) -> None:
    """Raises on keys of `section` outside `valid`, naming the valid ones and the closest match."""
    allowed = ConfigDict({k: None for k in valid})
    for key in section.keys():
        if key not in allowed:
            raise unknown_key_error(f"{prefix}.{key}", allowed, prefix)


def _coerce(value: str, current: Any, key: str) -> Any:
    """Converts a command-line string to the type of the current value."""
    parsed = _literal(value)
    if current is None:
        return parsed
    if isinstance(current, str):  # a quoted literal ("'full'", as sweep files write it) loses its quotes
        return parsed if isinstance(parsed, str) and value.strip()[:1] in ("'", '"') else value
    if isinstance(current, bool):
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}: expected a bool, got {value!r}")
    if isinstance(current, (int, float)):
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
            raise ConfigError(f"--config.{key}: expected a number, got {value!r}")
        return float(parsed) if isinstance(current, float) else parsed
    if isinstance(current, (tuple, list)):
        if not isinstance(parsed, (tuple, list)):
            raise ConfigError(f"--config.{key}: expected a sequence, got {value!r}")
        return type(current)(parsed)
    return parsed


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
    """Applies `key.sub=value` overrides; unknown keys raise naming the valid ones."""
    config = ConfigDict(config.to_dict()) if not isinstance(config, ConfigDict) else config
    with config.unlocked():
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"Override '{item}' must look like key=value")
            parent, leaf = _lookup_parent(config, key)
            parent[leaf] = _coerce(value, parent[leaf], key)
    return config


def validate_keys(config: ConfigDict, reference: ConfigDict, open_sections: frozenset[str] = frozenset(),
                  prefix: str = "") -> None:
    """Raises if `config` holds keys `reference` lacks; `open_sections` are checked by their consumers."""
    for key in config.keys():
        full = f"{prefix}.{key}" if prefix else key
        if key not in reference:
            raise unknown_key_error(full, reference, prefix)
        sub, ref = config[key], reference[key]
        if full in open_sections:
            continue
        if isinstance(sub, ConfigDict) and isinstance(ref, ConfigDict):
            validate_keys(sub, ref, open_sections, full)


def merge_defaults(config: ConfigDict, defaults: ConfigDict,
                   open_sections: frozenset[str] = frozenset()) -> ConfigDict:
    """Fills keys missing from `config` with `defaults` after checking `config` for unknown keys."""
    validate_keys(config, defaults, open_sections)
    merged = ConfigDict(defaults.to_dict())
    _deep_update(merged, config)
    return merged


def config_args(arg: Any, **defaults: Any) -> ConfigDict:
    """The `file.py:k=v` arguments of a `get_config(arg)` over their defaults; unknown names raise."""
    given = arg.to_dict() if isinstance(arg, ConfigDict) else {}
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"Unknown config arg(s) {sorted(unknown)}; valid: {sorted(defaults)}")
    return ConfigDict({**defaults, **given})


def fill_missing(config: ConfigDict, defaults: dict[str, Any]) -> ConfigDict:
    """`config` with keys it lacks taken from `defaults` (nested); its own values win."""
    merged = ConfigDict(defaults)
    _deep_update(merged, config)
    return merged


def _deep_update(target: ConfigDict, source: ConfigDict) -> None:
    """Recursively copies `source` into `target`."""
    with target.unlocked():
        for key in source.keys():
            value = source[key]
            if isinstance(value, ConfigDict) and isinstance(target.get(key), ConfigDict):
                _deep_update(target[key], value)
            else:
                target[key] = value


def split_cli_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.key=value` (or `--config.key value`) from other arguments."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def small_run(objective: str, steps: int, batch: int, b2: float = 0.98) -> ConfigDict:
    """Run settings the small experiments share: seed 0, progress every 50 steps, evaluation at the end, AdamW
    (lr 1e-3, weight decay 0.1, clip 1) on a cosine schedule after min(200, steps/10) warmup steps, a checkpoint
    every quarter of the run (two kept)."""
    c = ConfigDict()
    c.objective = objective
    c.seed = 0
    c.total_steps = steps
    c.batch_size = batch
    c.log_every = 50
    c.eval_every = 0
    c.optim = dict(name="adamw", lr=1e-3, b2=b2, weight_decay=0.1, warmup_steps=min(200, steps // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=max(steps // 4, 1), keep=2)
    return c


def pod_run(objective: str, steps: int, batch: int, mesh: list, remat: str,
            grad_accum: int | None = None) -> tuple[ConfigDict, dict]:
    """The run header the web-scale recipes share (seed 0, progress every 50 steps, the given mesh) and the tower
    settings they share (scanned layers, bf16 matmuls and residual stream, `remat`), as (config, tower settings)."""
    c = ConfigDict()
    c.objective = objective
    c.seed = 0
    c.total_steps = steps
    c.batch_size = batch
    if grad_accum is not None:
        c.grad_accum_steps = grad_accum
    c.mesh = mesh
    c.log_every = 50
    return c, dict(scan=True, remat_policy=remat, dtype_mm="bfloat16", residual_dtype="bfloat16")
