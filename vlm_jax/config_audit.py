"""Which config keys a run reads. While `recording(config)` is active, every read of a leaf of `config` (attribute,
item, `get`, `dict(section)`) is recorded by its dotted path, and so is every read of a section merged over its
defaults by `merged` (the objectives' and datasets' way to read a section). Bulk conversions elsewhere (`to_dict`)
count as reading the whole subtree. The check over shipped configs (tests/test_config_keys_read.py) uses it to find
keys that nothing reads."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from ml_collections import ConfigDict


class Recorder:
    """Paths of a config's ConfigDict nodes and the dotted paths read so far."""

    def __init__(self, config: ConfigDict):
        self.paths: dict[int, list[str]] = {}  # one node may sit at several paths (a dict used twice)
        self.read: set[str] = set()
        self._index(config, "")

    def _index(self, node: ConfigDict, path: str) -> None:
        self.paths.setdefault(id(node), []).append(path)
        for key, value in node._fields.items():  # noqa: SLF001 - the raw fields, without recording a read
            if isinstance(value, ConfigDict):
                self._index(value, f"{path}{key}.")

    def add(self, node: Any, key: str) -> None:
        """Records `key` of `node` (at each path it sits at)."""
        for path in self.paths.get(id(node), ()):
            self.read.add(path + key)

    def is_read(self, key: str) -> bool:
        """Whether `key` or a section above it was read."""
        parts = key.split(".")
        return any(".".join(parts[:i]) in self.read for i in range(1, len(parts) + 1))


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("vlm_jax_config_audit", default=None)
_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("vlm_jax_config_audit_quiet", default=False)


class TrackedDict(dict):
    """A merged section whose key reads are recorded (a dict-valued key counts for its whole subtree)."""

    def __init__(self, data: dict[str, Any], section: ConfigDict, recorder: Recorder):
        super().__init__(data)
        self._section, self._recorder = section, recorder

    def __getitem__(self, key: str) -> Any:
        self._recorder.add(self._section, str(key))
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            self._recorder.add(self._section, str(key))
        return super().get(key, default)


def merged(defaults: dict[str, Any], section: ConfigDict) -> dict[str, Any]:
    """`section` over `defaults` as a plain dict; while recording, one whose reads are recorded."""
    recorder = _ACTIVE.get()
    token = _QUIET.set(True)
    try:
        data = {**defaults, **section.to_dict()}
    finally:
        _QUIET.reset(token)
    if recorder is None or id(section) not in recorder.paths:
        return data
    return TrackedDict(data, section, recorder)


_ORIGINAL = {"getitem": ConfigDict.__getitem__, "to_dict": ConfigDict.to_dict}


def _getitem(self: ConfigDict, key: str) -> Any:
    value = _ORIGINAL["getitem"](self, key)
    recorder = _ACTIVE.get()
    if isinstance(value, ConfigDict) and len(value):  # a section: its own keys are read (or not) below it
        return value
    if recorder is not None and not _QUIET.get():
        recorder.add(self, str(key))
    return value


def _to_dict(self: ConfigDict, *args: Any, **kwargs: Any) -> dict:
    recorder = _ACTIVE.get()
    if recorder is not None and not _QUIET.get():
        for path in recorder.paths.get(id(self), ()):
            recorder.read.add(path.rstrip(".") or "<root>")
    token = _QUIET.set(True)
    try:
        return _ORIGINAL["to_dict"](self, *args, **kwargs)
    finally:
        _QUIET.reset(token)


@contextlib.contextmanager
def recording(config: ConfigDict) -> Iterator[Recorder]:
    """Records the reads of `config`'s keys inside the block (ConfigDict is patched for its duration)."""
    recorder = Recorder(config)
    token = _ACTIVE.set(recorder)
    ConfigDict.__getitem__, ConfigDict.to_dict = _getitem, _to_dict
    try:
        yield recorder
    finally:
        ConfigDict.__getitem__, ConfigDict.to_dict = _ORIGINAL["getitem"], _ORIGINAL["to_dict"]
        _ACTIVE.reset(token)


def leaf_keys(config: ConfigDict, sections: tuple[str, ...]) -> list[str]:
    """Dotted paths of the leaves under `sections` (a dict-valued leaf inside a section counts as one key)."""
    out: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, ConfigDict) and len(node._fields):  # noqa: SLF001
            for key, value in node._fields.items():  # noqa: SLF001
                walk(value, f"{path}.{key}")
        else:
            out.append(path)

    for name in sections:
        if name in config._fields:  # noqa: SLF001
            walk(config._fields[name], name)  # noqa: SLF001
    return out
