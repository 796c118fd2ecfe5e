"""Dataset "shards": image–caption pairs from webdataset / parquet shards (img2dataset's layouts), local or in
object storage; captions tokenised by a SentencePiece model (a file, or one trained once on the shards' first
captions). Evaluation comes from the standard benchmarks (`evals.suite`), not from the shards."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data import base, robust
from vlm_jax.data.base import TokenizerText, register
from vlm_jax.data.pipeline import MAX_PIXELS
from vlm_jax.data.shards import config as shard_config
from vlm_jax.data.shards.order import EpochOrder
from vlm_jax.data.tokenizer import Tokenizer, write_tokenizer

CLIP_CROP = {"crop": {"scale": (0.9, 1.0), "ratio": (3 / 4, 4 / 3)}}  # open_clip's training RandomResizedCrop


@register("shards")
class ShardPairs(TokenizerText):
    """Image–caption pairs from shards (`data.shards`, see `vlm_jax/data/shards/config.py`)."""

    DEFAULTS = dict(name="shards", data_dir="", image_size=224, text_len=64, augment=CLIP_CROP, templates=("{}",),
                    tokenizer="sentencepiece", vocab_size=32_000, tokenizer_samples=100_000, num_threads=-1,
                    max_pixels=MAX_PIXELS, shards=None)
    # tokenizer: a SentencePiece .model file, or "sentencepiece": a unigram model of vocab_size trained once on
    # the first tokenizer_samples captions of the shards (cached in data_dir). templates: caption → text ("{}").

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.data_dir = cfg["data_dir"] or base.default_data_dir()
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.augment, self.templates = dict(cfg["augment"] or {}), list(cfg["templates"])
        self.num_threads, self.max_pixels = int(cfg["num_threads"]), int(cfg["max_pixels"])
        self.shards = shard_config.section(config)
        if not shard_config.enabled(self.shards):
            raise ValueError("data.name='shards' needs data.shards.urls: a shard pattern such as "
                             "'/data/laion/{00000..00099}.tar' or 'gs://bucket/shards/*.parquet'")
        self.tokenizer = self._tokenizer(cfg["tokenizer"], int(cfg["vocab_size"]), int(cfg["tokenizer_samples"]))

    def _tokenizer(self, spec: str, vocab_size: int, samples: int) -> Tokenizer:
        if spec != "sentencepiece":
            if not Path(spec).is_file():
                raise FileNotFoundError(f"data.tokenizer {spec!r} is neither 'sentencepiece' nor a SentencePiece "
                                        f".model file")
            return Tokenizer(spec)
        key = json.dumps([shard_config.source_specs(self.shards), self.shards["caption"], vocab_size, samples])
        path = Path(self.data_dir) / "shard_tokenizers" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.model"
        if not path.exists():
            if base.is_read_only():
                raise base.not_prepared(f"the shards' tokenizer {path.name}", self.data_dir,
                                        "a training run on the same shards")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_tokenizer(self._first_captions(samples), path, vocab_size)
        return Tokenizer(path)

    def _first_captions(self, n: int) -> list[str]:
        """Up to n captions, read in a fixed order spread over every source's shards."""
        out: list[str] = []
        readers = shard_config.readers(self.shards, self.data_dir)
        for r in readers:
            order = EpochOrder(r.sizes, seed=0, chunk=0, window=1)
            for pos in range(min(n // len(readers), int(r.sizes.sum()))):
                caption = robust.decode_caption(r.read(*order(pos)).get("caption"))
                if caption:
                    out.append(caption)
        if not out:
            raise ValueError(f"no readable captions in data.shards.urls {self.shards['urls']!r}")
        return out

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] token ids."""
        return self.tokenizer.encode(list(texts), self.text_len)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        return (batch_size, self.text_len), np.dtype(np.int32)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """This process's batched stream over the shards."""
        pre = shard_config.WebPreprocess(self.tokenize, self.image_size, self.augment, self.templates,
                                         fields=tuple(self.shards["fields"]), max_pixels=self.max_pixels)
        return shard_config.train_stream(self.shards, self.data_dir, pre, batch_size=batch_size, seed=seed,
                                         process_index=process_index, process_count=process_count,
                                         num_threads=self.num_threads)

    def eval_sets(self, names: list[str]) -> dict[str, Any]:
        """Shards carry no held-out sets: evaluate on the standard benchmarks (`evals.suite`)."""
        if names:
            raise ValueError(f"evals sets {names}: data.name='shards' has none; use evals.suite (standard benchmarks)")
        return {}

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """None of its own (`evals.sets` must be empty); the standard-benchmark suite is added by the objective."""
        self.eval_sets(list(config.get("sets", []) or []))
        return {}
