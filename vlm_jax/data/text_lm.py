"""Dataset "text_corpus": the offline text corpus (`data/text_corpus.py`) as a language model's training stream
(one sentence per row: its tokens, EOS, right padding) and its held-out sentences."""
from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data import pipeline, robust, text_corpus
from vlm_jax.data.base import TokenizerText, default_data_dir, register
from vlm_jax.data.tokenizer import Tokenizer


class _Tokenize(grain.transforms.RandomMap):
    """A sentence → its tokens (cut to text_len: counted, `robust.TRUNCATED`); an empty one is a bad example."""

    def __init__(self, tok: Tokenizer, text_len: int):
        self.tok, self.text_len = tok, text_len

    def random_map(self, sentence: str, rng: np.random.Generator) -> dict[str, Any]:
        del rng  # nothing is drawn: the stream's shuffle is the only randomness
        if not sentence.strip():
            return {robust.BAD: "caption"}
        ids, cut = self.tok.encode_checked([sentence], self.text_len)
        return {"text": ids[0], robust.TRUNCATED: ("text",) if cut[0] else ()}


@register("text_corpus")
class TextCorpus(TokenizerText):
    """Sentences of the corpus's train split, shuffled per epoch; its test split for held-out perplexity."""

    # text_len: tokens per row with EOS (48 holds 95.6% of the training sentences, mean 20); eval_sentences: the held-out
    # sentences scored (0: all of them)
    DEFAULTS = dict(name="text_corpus", data_dir="", text_len=48, num_threads=-1, eval_sentences=0)

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.data_dir = cfg["data_dir"] or default_data_dir()
        self.text_len, self.num_threads = int(cfg["text_len"]), int(cfg["num_threads"])
        self.eval_sentences = int(cfg["eval_sentences"])
        self.root = text_corpus.build(self.data_dir)
        self.tokenizer = Tokenizer(self.root / "tokenizer.model")

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] token ids."""
        return self.tokenizer.encode(texts, self.text_len)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of model text inputs."""
        return (batch_size, self.text_len), np.dtype(np.int32)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """Shuffled, tokenised, batched grain dataset of this process's share of the training sentences."""
        src = text_corpus.load_split(self.data_dir, "train")
        return pipeline.train_stream(src, _Tokenize(self.tokenizer, self.text_len), batch_size=batch_size,
                                     seed=seed, process_index=process_index, process_count=process_count,
                                     num_threads=self.num_threads, name=f"text corpus train split in {self.root}")

    def train_tokens(self) -> np.ndarray:
        """int32 [N, text_len]: every training sentence tokenised (the unigram baseline's counts)."""
        return self.tokenize(text_corpus.load_split(self.data_dir, "train"))

    def held_out(self) -> list[str]:
        """The test split's sentences (the first `eval_sentences` when set)."""
        test = text_corpus.load_split(self.data_dir, "test")
        return test[:self.eval_sentences] if self.eval_sentences else test
