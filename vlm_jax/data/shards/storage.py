"""Reading shards from local disk or object storage: remote shards are downloaded whole (with retries and
exponential backoff) into a local cache bounded in bytes, shared by the workers of one host; a shard that stays
unreachable raises `ShardUnavailable` naming it, so the stream can skip and count its samples instead of hanging."""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from vlm_jax.data.shards.urls import is_remote

log = logging.getLogger(__name__)


class ShardUnavailable(OSError):
    """A shard that could not be read after the retries (missing, unreachable or unreadable)."""


def stats_url(url: str) -> str:
    """img2dataset's per-shard statistics file beside `url` (`00000.tar` → `00000_stats.json`)."""
    return url.rsplit(".", 1)[0] + "_stats.json"


class Storage:
    """Local paths read in place; remote URLs fetched through fsspec into `cache_dir`, least recently used
    shards evicted past `cache_bytes`. `retries` attempts per read, sleeping `backoff` · 2^k (± 50% jitter)."""

    def __init__(self, cache_dir: str | Path, cache_bytes: int = 50 << 30, retries: int = 5, backoff: float = 0.5,
                 storage_options: dict[str, Any] | None = None, prefetch_threads: int = 2, timeout: float = 60.0):
        self.cache_dir, self.cache_bytes = Path(cache_dir), int(cache_bytes)
        self.retries, self.backoff, self.timeout = max(1, int(retries)), float(backoff), float(timeout)
        self.storage_options = dict(storage_options or {})
        self.prefetch_threads = prefetch_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable for grain worker processes (no pool, no futures)
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_pending", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool, self._pending, self._lock = None, {}, threading.Lock()

    def _retry(self, what: str, fn: Any) -> Any:
        """fn() with retries; a missing file is not retried."""
        error: Exception | None = None
        for attempt in range(self.retries):
            try:
                return fn()
            except FileNotFoundError as e:
                raise ShardUnavailable(f"{what}: not found ({e})") from e
            except Exception as e:  # noqa: BLE001  (network errors come in many types)
                error = e
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff * 2 ** attempt * (0.5 + random.random()))
        raise ShardUnavailable(f"{what}: unreadable after {self.retries} attempts ({type(error).__name__}: {error})")

    def _cached_path(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        return self.cache_dir / f"{digest}-{os.path.basename(url.split('?', 1)[0])}"

    def local(self, url: str) -> str:
        """A local path holding the shard's bytes (downloading a remote one); raises `ShardUnavailable`."""
        if not is_remote(url):
            path = url.removeprefix("file://")
            if not os.path.isfile(path):
                raise ShardUnavailable(f"shard {url}: not found")
            return path
        pending = self._pending.get(url)
        if pending is not None:
            pending.result()  # a prefetch of this shard is under way: wait for it (its error is re-raised below)
        path = self._cached_path(url)
        if path.exists():
            os.utime(path)  # recently used
            return str(path)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(str(path) + ".lock", "w") as lock:  # one download per host, whichever worker asks first
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                self._retry(f"shard {url}", lambda: self._download(url, path))
                self._evict(keep=path)
        return str(path)

    def _options(self, url: str) -> dict[str, Any]:
        """fsspec options for `url`: the configured ones, plus the connect / read timeout for http(s) (a server that
        accepts and never answers raises instead of hanging)."""
        options = dict(self.storage_options)
        if url.startswith(("http://", "https://")) and "client_kwargs" not in options:
            import aiohttp

            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout, sock_read=self.timeout)}
        return options

    def _download(self, url: str, path: Path) -> None:
        import fsspec

        tmp = path.with_name(path.name + f".part{os.getpid()}")
        with fsspec.open(url, "rb", **self._options(url)) as src, open(tmp, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        os.replace(tmp, path)

    def _evict(self, keep: Path) -> None:
        """Deletes least recently used cached shards until the cache fits `cache_bytes` (never `keep`)."""
        files = [p for p in self.cache_dir.iterdir() if p.is_file() and not p.name.endswith((".lock",)) and
                 ".part" not in p.name]
        total = sum(p.stat().st_size for p in files)
        for p in sorted(files, key=lambda p: p.stat().st_mtime):
            if total <= self.cache_bytes:
                break
            if p != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)

    def prefetch(self, urls: Sequence[str]) -> None:
        """Starts downloading remote shards in background threads (errors surface when `local` asks for them)."""
        remote = [u for u in urls if is_remote(u) and u not in self._pending and not self._cached_path(u).exists()]
        if not remote:
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.prefetch_threads, thread_name_prefix="shard-prefetch")
            for u in remote:
                future = self._pool.submit(self._quiet_local, u)
                self._pending[u] = future
                future.add_done_callback(lambda _f, u=u: self._pending.pop(u, None))

    def _quiet_local(self, url: str) -> None:
        try:
            self._pending.pop(url, None)
            self.local(url)
        except ShardUnavailable:
            pass  # the reader meets the error again and counts the shard's samples as skipped

    def read_text(self, url: str) -> str | None:
        """A small file's text (e.g. `_stats.json`), or None when it does not exist."""
        if not is_remote(url):
            path = url.removeprefix("file://")
            return Path(path).read_text() if os.path.isfile(path) else None
        import fsspec

        def read() -> str:
            with fsspec.open(url, "rt", **self._options(url)) as f:
                return f.read()
        try:
            return self._retry(url, read)
        except ShardUnavailable as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return None
            raise
