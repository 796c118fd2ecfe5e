"""One source's shards as random-access samples: sample counts per shard (img2dataset's `_stats.json` when it is
there, else the shard's own index), and each sample's raw fields, or a reason it is bad."""
from __future__ import annotations

import collections
import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from vlm_jax.data import robust
from vlm_jax.data.shards import formats
from vlm_jax.data.shards.storage import ShardUnavailable, Storage, stats_url
from vlm_jax.data.shards.urls import shard_format

log = logging.getLogger(__name__)
SHARD_REASONS = ("member", "shard")  # a sample missing from its (truncated) shard; a shard that cannot be read


class LRU(collections.OrderedDict):
    """A small least-recently-used cache (`get`/`put`)."""

    def __init__(self, size: int = 8):  # (the default: unpickling calls it without arguments)
        super().__init__()
        self.size = size

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class ShardReader:
    """Samples of one source. `caption`: the member extension holding the caption (default "txt"), or
    "json:FIELD"; parquet: the caption column (default "caption"). `image`: parquet's image column (bytes, or paths relative to the file).
    `fields`: json fields (parquet: columns) passed on as int32 (e.g. a class id)."""

    def __init__(self, urls: Sequence[str], storage: Storage, name: str, fmt: str = "auto", caption: str = "",
                 image: str = "jpg", fields: Sequence[str] = (), count_threads: int = 16):
        self.urls, self.storage, self.name = list(urls), storage, name
        formats_ = {shard_format(u) if fmt == "auto" else fmt for u in self.urls}
        if len(formats_) != 1 or not formats_ <= {"wds", "parquet"}:
            raise ValueError(f"source {name!r}: shards must all be webdataset tars or all parquet, got {formats_}")
        self.format = formats_.pop()
        self.caption = caption or ("txt" if self.format == "wds" else "caption")  # img2dataset's names
        self.image, self.fields = image, tuple(fields)
        self._index = LRU(64)
        self._groups = LRU(8)
        self.unavailable: dict[str, str] = {}
        with ThreadPoolExecutor(count_threads) as pool:
            self.sizes = np.asarray(list(pool.map(self._count, range(len(self.urls)))), np.int64)
        if self.unavailable:
            log.warning("source %s: %d of %d shards unreadable and of unknown size, skipped: %s", name,
                        len(self.unavailable), len(self.urls), "; ".join(list(self.unavailable.values())[:5]))
        if self.sizes.sum() == 0:
            raise ValueError(f"source {name!r} has no readable samples in its {len(self.urls)} shards "
                             f"({self.urls[0]} …){': ' + next(iter(self.unavailable.values())) if self.unavailable else ''}")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_index"], state["_groups"] = LRU(64), LRU(8)
        return state

    def _count(self, shard: int) -> int:
        """Samples in the shard: img2dataset's stats ("successes"), else from the shard itself."""
        url = self.urls[shard]
        try:
            text = self.storage.read_text(stats_url(url))
            if text is not None:
                stats = json.loads(text)
                if "successes" in stats:
                    return int(stats["successes"])
            path = self.storage.local(url)  # no stats file: count from the shard itself
            return len(formats.index_tar(path).keys) if self.format == "wds" else formats.index_parquet(path).rows
        except (ShardUnavailable, ValueError, OSError) as e:
            self.unavailable[url] = str(e)
            return 0

    def _shard_index(self, shard: int, url: str | None = None) -> Any:
        """The shard's index (tar: keys and member offsets; parquet: row groups), cached."""
        index = self._index.get(shard)
        if index is None:
            path = self.storage.local(url or self.urls[shard])
            index = formats.index_tar(path) if self.format == "wds" else formats.index_parquet(path)
            if self.format == "wds":
                index = _TarSamples(index)
            self._index.put(shard, index)
        return index

    def read(self, shard: int, i: int) -> dict[str, Any]:
        """Sample i of the shard: {"image": bytes, "caption": bytes, "key": str, FIELD: value}, or
        {robust.BAD: reason} (reasons: image, caption, member, shard)."""
        try:
            index = self._shard_index(shard)
            path = self.storage.local(self.urls[shard])
        except ShardUnavailable as e:
            if self.urls[shard] not in self.unavailable:
                self.unavailable[self.urls[shard]] = str(e)
                log.warning("source %s: skipping the samples of %s", self.name, e)
            return {robust.BAD: "shard"}
        except (ValueError, OSError) as e:  # e.g. a parquet file with a broken footer
            self.unavailable.setdefault(self.urls[shard], str(e))
            return {robust.BAD: "shard"}
        if self.format == "wds":
            return self._read_tar(path, index, i)
        return self._read_parquet(shard, path, index, i)

    def _read_tar(self, path: str, index: "_TarSamples", i: int) -> dict[str, Any]:
        if i >= len(index):
            return {robust.BAD: "member"}
        key, members = index.keys[i], index.members[i]
        ext = next((e for e in formats.IMAGE_EXTS if e in members), None)
        if ext is None:
            return {robust.BAD: "image"}
        out: dict[str, Any] = {"image": formats.read_range(path, *members[ext]), "key": key}
        meta: dict[str, Any] | None = None
        if self.caption.startswith("json:") or self.fields:
            if "json" not in members:
                return {robust.BAD: "caption"}
            try:
                meta = json.loads(formats.read_range(path, *members["json"]))
            except ValueError:
                return {robust.BAD: "caption"}
        if self.caption.startswith("json:"):
            value = meta.get(self.caption[5:]) if isinstance(meta, dict) else None
            if value is None:
                return {robust.BAD: "caption"}
            out["caption"] = value
        elif self.caption in members:
            out["caption"] = formats.read_range(path, *members[self.caption])
        else:
            return {robust.BAD: "caption"}
        for f in self.fields:
            out[f] = np.int32(meta.get(f, -1)) if isinstance(meta, dict) else np.int32(-1)
        return out

    def _read_parquet(self, shard: int, path: str, index: formats.ParquetIndex, i: int) -> dict[str, Any]:
        if i >= index.rows:
            return {robust.BAD: "member"}
        g = int(np.searchsorted(index.group_starts, i, side="right")) - 1
        rows = self._groups.get((shard, g))
        if rows is None:
            missing = [c for c in (self.image, self.caption, *self.fields) if c not in index.columns]
            if missing:
                raise ValueError(f"source {self.name!r}: parquet file {self.urls[shard]} has no columns {missing}; "
                                 f"its columns: {index.columns} (set data.shards.image / caption / fields)")
            rows = formats.read_row_group(path, g, [self.image, self.caption, *self.fields])
            self._groups.put((shard, g), rows)
        r = i - index.group_starts[g]
        image, caption = rows[self.image][r], rows[self.caption][r]
        if isinstance(image, str):  # a path relative to the parquet file
            try:
                image_path = self.storage.local(posixpath.join(posixpath.dirname(self.urls[shard]), image))
                with open(image_path, "rb") as f:
                    image = f.read()
            except ShardUnavailable:
                return {robust.BAD: "image"}
        if not image:
            return {robust.BAD: "image"}
        if caption is None:
            return {robust.BAD: "caption"}
        out = {"image": image, "caption": caption, "key": f"{shard}:{i}"}
        for f in self.fields:
            value = rows[f][r]
            out[f] = np.int32(-1 if value is None else value)
        return out


class _TarSamples:
    """A tar index as samples (keys, members)."""

    def __init__(self, index: formats.TarIndex):
        self.keys, self.members, self.truncated = index.keys, index.members, index.truncated

    def __len__(self) -> int:
        return len(self.keys)
