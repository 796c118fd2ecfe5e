"""The `data.shards` config section, shared by every dataset that can train from shards: which shards (one or
several weighted sources), how they are read (format, caption and image fields), ordered (chunk, window), cached
(remote shards) and decoded (grain worker processes)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import grain

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data import robust
from vlm_jax.data.shards import urls as urls_lib
from vlm_jax.data.shards.reader import ShardReader
from vlm_jax.data.shards.storage import Storage
from vlm_jax.data.shards.stream import WebPreprocess, shard_stream

DEFAULTS = dict(
    urls="",  # a source's shards (brace pattern, glob, directory, or several joined by spaces / '::'), or a list of sources
    weights=(),  # mixing proportions, one per source (default: each source's sample count)
    names=(),  # source names in the metrics (default: the shards' folder names)
    format="auto",  # "wds" (tars), "parquet", or "auto" (by extension)
    caption="",  # tars: the caption member's extension (default "txt"), or "json:FIELD"; parquet: the column ("caption")
    image="jpg",  # parquet: the image column (encoded bytes, or paths relative to the file)
    fields=(),  # json fields (parquet: columns) passed on as int32, e.g. ("concept",)
    chunk=0,  # samples per shuffled chunk (0: whole shards)
    window=8,  # chunks whose samples are permuted together
    cache_dir="",  # where remote shards are downloaded (default: <data_dir>/shard_cache)
    cache_bytes=50 << 30,  # bound on the download cache
    retries=5,  # attempts per remote read
    backoff=0.5,  # seconds before the first retry (doubling, ±50% jitter)
    timeout=60.0,  # seconds without progress before an http(s) read fails (and is retried)
    storage_options={},  # passed to fsspec, e.g. {"endpoint_url": …} for an S3-compatible store
    worker_count=0,  # grain worker processes decoding batches (0: in the training process)
    worker_buffer=2,  # batches each worker prepares ahead
)


def recipe_data(data: str, image_size: int, text_len: int, vocab_size: int, tokenizer: str, urls: str,
                workers: int) -> dict[str, Any]:
    """A web-scale recipe's `data` section: the "shards" dataset over `urls`, or "synthetic" data of the same
    shapes (`data="synthetic"`, for dry runs)."""
    if data == "synthetic":
        return dict(name="synthetic", image_size=image_size, text_len=text_len, vocab_size=vocab_size)
    return dict(name="shards", image_size=image_size, text_len=text_len, tokenizer=tokenizer, vocab_size=vocab_size,
                shards=dict(urls=urls, worker_count=workers))


def section(config: Any) -> dict[str, Any]:
    """The merged `data.shards` section (raising naming the valid keys on an unknown one)."""
    raw = config.get("shards", None) if config is not None else None
    if raw is None:
        return dict(DEFAULTS)
    check_keys(raw, DEFAULTS, "data.shards")
    return merged(DEFAULTS, raw) if hasattr(raw, "to_dict") else {**DEFAULTS, **raw}


def enabled(cfg: dict[str, Any]) -> bool:
    """Whether the section names any shards."""
    return bool(cfg["urls"])


def source_specs(cfg: dict[str, Any]) -> list[str | list[str]]:
    """One spec per source: `urls` as one source, or a list whose items are sources."""
    value = cfg["urls"]
    return [value] if isinstance(value, str) else list(value)


def _default_name(spec: str | Sequence[str], k: int) -> str:
    first = spec if isinstance(spec, str) else spec[0]
    first = first.split()[0].split("::")[0]
    parent = os.path.basename(os.path.dirname(first.rstrip("/"))) if not os.path.isdir(first) else \
        os.path.basename(first.rstrip("/"))
    return parent or f"source{k}"


def readers(cfg: dict[str, Any], data_dir: str | Path) -> list[ShardReader]:
    """One reader per source (sample counts read at construction)."""
    specs = source_specs(cfg)
    names = list(cfg["names"]) or [_default_name(s, k) for k, s in enumerate(specs)]
    if len(names) != len(specs) or len(set(names)) != len(names):
        names = [f"{n}{k}" for k, n in enumerate(names)] if len(names) == len(specs) else names
        if len(names) != len(specs):
            raise ValueError(f"data.shards.names has {len(names)} names for {len(specs)} sources")
    weights = list(cfg["weights"])
    if weights and (len(weights) != len(specs) or min(weights) <= 0):
        raise ValueError(f"data.shards.weights must be {len(specs)} positive numbers (one per source), got {weights}")
    storage = Storage(cfg["cache_dir"] or Path(data_dir) / "shard_cache", int(cfg["cache_bytes"]),
                      int(cfg["retries"]), float(cfg["backoff"]), dict(cfg["storage_options"]),
                      timeout=float(cfg["timeout"]))
    return [ShardReader(urls_lib.expand(spec), storage, name, cfg["format"], cfg["caption"], cfg["image"],
                        tuple(cfg["fields"])) for spec, name in zip(specs, names)]


def train_stream(cfg: dict[str, Any], data_dir: str | Path, preprocess: WebPreprocess, *, batch_size: int,
                 seed: int, process_index: int, process_count: int, num_threads: int = -1) -> grain.IterDataset:
    """This process's batched stream over the configured shards."""
    return shard_stream(readers(cfg, data_dir), list(cfg["weights"]) or None, preprocess, batch_size=batch_size,
                        seed=seed, process_index=process_index, process_count=process_count,
                        chunk=int(cfg["chunk"]), window=int(cfg["window"]), num_threads=num_threads,
                        worker_count=int(cfg["worker_count"]), worker_buffer=int(cfg["worker_buffer"]))


__all__ = ["DEFAULTS", "section", "enabled", "readers", "train_stream", "WebPreprocess", "robust"]
