"""Shard lists: brace patterns (`dir/{00000..01023}.tar`, `{a,b}`), globs and lists, local or remote."""
from __future__ import annotations

import itertools
import re
from typing import Sequence

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_BRACE = re.compile(r"\{([^{}]*)\}")
REMOTE = ("gs://", "s3://", "http://", "https://", "gcs://", "memory://")


def is_remote(url: str) -> bool:
    """Whether `url` names object storage or a web server (anything fsspec reads that is not a local path)."""
    return url.startswith(REMOTE) or ("://" in url and not url.startswith("file://"))


def expand_braces(pattern: str) -> list[str]:
    """All names of a brace pattern, in order: `{000..003}` (zero-padded to the first bound's width), `{a,b}`."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = _RANGE.fullmatch("{" + body + "}")
    if r:
        lo, hi = r.group(1), r.group(2)
        if int(hi) < int(lo):
            raise ValueError(f"empty range {{{lo}..{hi}}} in shard pattern {pattern!r}")
        choices = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [head + c + rest for c in choices for rest in expand_braces(tail)]


def _glob(pattern: str) -> list[str]:
    """Files matching a glob (`*`, `?`, `[...]`), local or remote (fsspec), sorted."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    found = sorted(fs.glob(path))
    protocol = pattern.split("://", 1)[0] + "://" if is_remote(pattern) else ""
    return [p if p.startswith(protocol) else protocol + p for p in found] if protocol else found


def expand(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs of one source: a pattern, several separated by whitespace or '::', or a list of them; a local
    directory means its `*.tar` (else `*.parquet`) files. Raises naming the spec when it matches nothing."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in itertools.chain.from_iterable(re.split(r"\s+|::", p.strip()) for p in parts):
        if not part:
            continue
        for name in expand_braces(part):
            if any(c in name for c in "*?[") and not name.startswith(("http://", "https://")):
                out += _glob(name)
            elif not is_remote(name) and _is_dir(name):
                out += _glob(name.rstrip("/") + "/*.tar") or _glob(name.rstrip("/") + "/*.parquet")
            else:
                out.append(name)
    if not out:
        raise ValueError(f"shard spec {spec!r} matches no files")
    return out


def _is_dir(path: str) -> bool:
    import os

    return os.path.isdir(path.removeprefix("file://"))


def shard_format(url: str) -> str:
    """"wds" for tars, "parquet" for parquet files (by extension); raises naming the URL otherwise."""
    base = url.split("?", 1)[0]
    if base.endswith(".tar"):
        return "wds"
    if base.endswith((".tar.gz", ".tgz")):
        raise ValueError(f"shard {url!r} is a compressed tar, which cannot be read at member offsets: write plain "
                         f"tars (img2dataset does) or parquet")
    if base.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"cannot tell the format of shard {url!r}: expected .tar or .parquet (or set data.format)")
