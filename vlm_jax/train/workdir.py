"""A training workdir on disk: who wrote it (`vlm_jax.json`) and restoring its parameters, read-only. The trainer
writes through this module and `vlm_jax.load` / `init_from` read through it, so training never imports the API."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

# Bumped when a workdir written by this version can no longer be read by older code (or the reverse).
RUN_FORMAT = 1
VERSION_FILE = "vlm_jax.json"


class RunLoadError(RuntimeError):
    """A workdir that cannot be loaded: no config, no readable checkpoint, or written by an incompatible version."""


def version() -> str:
    """The installed vlm_jax version."""
    from importlib import metadata

    try:
        return metadata.version("vlm_jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_version(workdir: str | Path) -> None:
    """Records which vlm_jax (and workdir format) wrote a run."""
    (Path(workdir) / VERSION_FILE).write_text(json.dumps({"vlm_jax": version(), "format": RUN_FORMAT}) + "\n")


def written_by(workdir: Path) -> dict[str, Any]:
    """The writer record of a workdir (runs from before the record existed count as format 1)."""
    path = workdir / VERSION_FILE
    return json.loads(path.read_text()) if path.exists() else {"vlm_jax": "unknown (before 0.1.0)", "format": 1}


def restore_run(workdir: str | Path, step: int | None = None, mesh: Sequence[Sequence[Any]] | None = None,
                overrides: Sequence[str] = ()) -> tuple[Any, Any, int]:
    """(Setup, parameters, step) of the run in `workdir` at its newest readable checkpoint (or `step`), on the
    run's mesh or `mesh`, with `overrides` applied to its config. Data is only read, never downloaded or built."""
    import ml_collections

    from vlm_jax.config import ConfigError, apply_overrides
    from vlm_jax.data.base import read_only
    from vlm_jax.train.checkpoint import Checkpointer
    from vlm_jax.train.trainer import Setup, finalize_config

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise RunLoadError(f"{workdir} has no config.json: not a training workdir")
    written = written_by(workdir)
    who = f"written by vlm_jax {written.get('vlm_jax')} (format {written.get('format')}); this is {version()} " \
          f"(format {RUN_FORMAT})"
    if int(written.get("format", 1)) > RUN_FORMAT:
        raise RunLoadError(f"{workdir} was {who}: upgrade vlm_jax to load it")
    try:
        config = finalize_config(ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())))
        if mesh is not None:
            overrides = [f"mesh={[tuple(axis) for axis in mesh]!r}", *overrides]
        config = apply_overrides(config, list(overrides))
    except (KeyError, ValueError, AttributeError) as exc:
        raise RunLoadError(f"{workdir}: its config does not fit this version ({who}): {exc}") from exc
    try:
        with read_only():
            setup = Setup(config)
    except ConfigError as exc:
        raise RunLoadError(f"{workdir}: its config does not fit this version ({who}): {exc}") from exc
    except ValueError as exc:
        hint = "; pass mesh=[('data', -1)] to use this machine's devices" if "devices" in str(exc) else f" ({who})"
        raise RunLoadError(f"{workdir}: cannot build the run's model and mesh here: {exc}{hint}") from exc
    checkpoints = workdir / "checkpoints"
    if not checkpoints.exists() or not any(checkpoints.iterdir()):
        raise RunLoadError(f"{workdir} has no checkpoint (the run has not saved one yet)")
    ckpt = Checkpointer(checkpoints, every_steps=0, async_save=False)
    try:
        state, found = ckpt.restore_state(setup.abstract_state(config.seed), step)
    except Exception as exc:  # noqa: BLE001 - explain with the version that wrote it
        raise RunLoadError(f"{workdir}: no checkpoint could be read ({who}):\n{exc}") from exc
    finally:
        ckpt.close()
    return setup, state.params, found
