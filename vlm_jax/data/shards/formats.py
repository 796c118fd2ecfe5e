"""Per-shard sample indexes: a webdataset tar's members grouped by key (byte offsets found by walking the tar
headers once), a parquet file's rows by row group; reading one sample's fields from them."""
from __future__ import annotations

import dataclasses
import os
import tarfile
from typing import Any

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest the extension."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


@dataclasses.dataclass
class TarIndex:
    """Samples of one tar in order: key and {extension: (offset, size)}; `truncated`: the tar ended early."""

    keys: list[str]
    members: list[dict[str, tuple[int, int]]]
    truncated: bool


def index_tar(path: str) -> TarIndex:
    """Walks the tar's headers (no member data is read); members of one key must be consecutive, as webdataset
    writers (and img2dataset) write them. A truncated tar keeps the samples whose members are all complete."""
    size = os.path.getsize(path)
    keys: list[str] = []
    members: list[dict[str, tuple[int, int]]] = []
    truncated, cut_key = False, None  # cut_key: the key of the member the tar ends in (None: unknown)
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_name(info.name)
                if info.offset_data + info.size > size:
                    truncated, cut_key = True, key
                    break
                if key.rpartition("/")[2].startswith(("__", ".")):
                    continue
                if not keys or keys[-1] != key:
                    keys.append(key)
                    members.append({})
                members[-1][ext] = (info.offset_data, info.size)
    except (tarfile.ReadError, EOFError, OSError):
        truncated = True
    if truncated and keys and cut_key in (None, keys[-1]):  # the last key may miss members cut off
        keys.pop()
        members.pop()
    return TarIndex(keys, members, truncated)


def read_range(path: str, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of a local file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


@dataclasses.dataclass
class ParquetIndex:
    """Rows of one parquet file: the first row of each row group (and the total at the end)."""

    group_starts: list[int]
    columns: list[str]

    @property
    def rows(self) -> int:
        return self.group_starts[-1]


def index_parquet(path: str) -> ParquetIndex:
    """Row-group boundaries from the parquet footer (no data read)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    starts = [0]
    for g in range(meta.num_row_groups):
        starts.append(starts[-1] + meta.row_group(g).num_rows)
    return ParquetIndex(starts, list(meta.schema.names))


def read_row_group(path: str, group: int, columns: list[str]) -> dict[str, list[Any]]:
    """The named columns of one row group as Python lists."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read_row_group(group, columns=columns)
    return {c: table.column(c).to_pylist() for c in columns}
