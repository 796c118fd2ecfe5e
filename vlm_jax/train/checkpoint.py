"""Orbax checkpoints of the train state + grain iterator + metadata, with fallback to older good ones."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be restored."""


class Checkpointer:
    """Saves every `every_steps`; keeps the last `keep` (and every `keep_period`-th); restores newest good one."""

    def __init__(self, directory: str | Path, *, every_steps: int, keep: int = 3, keep_period: int = 0,
                 async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.every_steps = int(every_steps)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period or None, create=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to save after finishing `step` steps."""
        return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

    def save(self, step: int, state: Any, data_iter: Any, meta: dict[str, Any]) -> None:
        """Saves asynchronously (state arrays are copied before returning)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(data_iter),
                                  meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)

    def save_state(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves a state with no data iterator (a converted checkpoint: `restore_state` reads it, training does
        not resume from it)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)

    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def _meta(self, step: int) -> dict[str, Any]:
        """The metadata item alone."""
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore_latest(self, abstract_state: Any, data_iter: Any,
                       check_meta: Callable[[int, dict[str, Any]], None] | None = None,
                       ) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest readable checkpoint into (state, meta); None when there is none at all.

        `check_meta(step, meta)` runs before the state is read; what it raises propagates (no fallback).
        """
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            if check_meta is not None:
                try:
                    meta = self._meta(step)
                except Exception as exc:  # noqa: BLE001 - unreadable metadata: treat like any broken checkpoint
                    log.warning("Checkpoint metadata at step %d is unreadable (%s); trying an older one.", step, exc)
                    errors.append(f"step {step}: metadata: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                check_meta(step, meta)
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=grain.checkpoint.CheckpointRestore(data_iter),
                                          meta=ocp.args.JsonRestore())
                restored = self.manager.restore(step, args=args)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint falls back to an older one
                log.warning("Checkpoint at step %d is unreadable (%s: %s); trying an older one.",
                            step, type(exc).__name__, str(exc)[:300])
                errors.append(f"step {step}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if errors:
                log.warning("Resumed from step %d after skipping unreadable checkpoints.", step)
            return restored.state, dict(restored.meta)
        if steps:
            raise CheckpointError(f"All {len(steps)} checkpoints in {self.directory} are unreadable; refusing to "
                                  "restart from scratch. Move the directory away to start over.\n" +
                                  "\n".join(errors))
        return None

    def restore_state(self, abstract_state: Any, step: int | None = None) -> tuple[Any, int]:
        """The train state alone (no data iterator) of the newest readable checkpoint (or of `step`), and its step."""
        errors = []
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"No checkpoint at step {step} in {self.directory}; saved steps: {steps}")
            steps = [step]
        for step in reversed(steps):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                return self.manager.restore(step, args=args).state, step
            except Exception as exc:  # noqa: BLE001 - fall back to an older checkpoint
                errors.append(f"step {step}: {type(exc).__name__}: {str(exc)[:200]}")
        raise CheckpointError(f"No readable checkpoint in {self.directory}" + "".join(f"\n{e}" for e in errors))

    def close(self) -> None:
        """Finishes pending saves and releases resources."""
        self.manager.wait_until_finished()
        self.manager.close()

