"""Random image–text pairs of any shape: for dry runs, throughput benchmarks and paper-scale configs."""
from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.data import naflex as naflex_lib
from vlm_jax.data.base import ImageInputs, register
from vlm_jax.config_audit import merged

NUM_EXAMPLES = 2 ** 31 - 1  # an epoch no run reaches


class _Sample(grain.transforms.Map):
    """Index → deterministic random image in [-1, 1] and right-padded token ids (last real token = eos)."""

    def __init__(self, seed: int, image_size: int, text_len: int, vocab_size: int, eos_id: int = 2,
                 text_image_size: int = 0, prompt_len: int = 0):
        self.seed, self.image_size, self.text_len, self.vocab_size, self.eos_id = \
            seed, image_size, text_len, vocab_size, eos_id
        self.text_image_size, self.prompt_len = text_image_size, prompt_len

    def _tokens(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Right-padded random ids of random length, EOS last."""
        length = int(rng.integers(2, size + 1))
        text = np.zeros(size, np.int32)
        text[:length - 1] = rng.integers(3, self.vocab_size, length - 1)
        text[length - 1] = self.eos_id
        return text

    def map(self, index: int) -> dict[str, np.ndarray]:
        """One example, a function of (seed, index) only, so resuming reproduces it."""
        rng = np.random.default_rng([self.seed, index])
        image = rng.uniform(-1, 1, (self.image_size, self.image_size, 3)).astype(np.float32)
        text = self._tokens(rng, self.text_len)
        if self.text_image_size:  # stands in for rendered text (CLIPPO)
            s = self.text_image_size
            return {"image": image, "text": rng.uniform(-1, 1, (s, s, 3)).astype(np.float32)}
        if self.prompt_len:  # a task prompt (prompted objectives such as PaLI)
            return {"image": image, "text": text, "prompt": self._tokens(rng, self.prompt_len)}
        return {"image": image, "text": text}


MAX_ASPECT = 3.0  # synthetic NaFlex images: width / height log-uniform in [1/3, 3]


class _NaFlexBatch:
    """(batch index, example indices) → a NaFlex batch of random images: each example a random aspect ratio at
    `image_size`² pixels, its grid the largest within the batch's budget (drawn from the batch index, as the real
    pipeline does), random uint8 patches; text as `_Sample`'s."""

    def __init__(self, sample: _Sample, budgets: naflex_lib.Budgets):
        self.sample, self.budgets = sample, budgets

    def __call__(self, index: int, examples: np.ndarray) -> dict[str, Any]:
        budget = naflex_lib.budget_for(self.sample.seed, index, self.budgets.train)
        patch, n = self.budgets.patch, len(examples)
        image = dict(patches=np.zeros((n, budget, patch * patch * 3), np.uint8),
                     positions=np.zeros((n, budget, 2), np.int32), mask=np.zeros((n, budget), bool),
                     grid=np.zeros((n, 2), np.int32))
        texts = []
        for row, example in enumerate(np.asarray(examples).tolist()):
            rng = np.random.default_rng([self.sample.seed, example])
            aspect = float(np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT))))
            side = self.sample.image_size
            rows, cols = naflex_lib.grid_for(max(1, round(side / aspect ** 0.5)), max(1, round(side * aspect ** 0.5)),
                                             patch, budget)
            k = rows * cols
            image["patches"][row, :k] = rng.integers(0, 256, (k, patch * patch * 3), np.uint8)
            cells = np.arange(k)
            image["positions"][row, :k, 0], image["positions"][row, :k, 1] = cells // cols, cells % cols
            image["mask"][row, :k] = True
            image["grid"][row] = (rows, cols)
            texts.append(self.sample._tokens(rng, self.sample.text_len))
        return {"image": image, "text": np.stack(texts)}


@register("synthetic")
class SyntheticPairs(ImageInputs):
    """Shapes of a real dataset without its content; no evaluation sets."""

    DEFAULTS = dict(name="synthetic", image_size=224, text_len=64, vocab_size=32_000, text_format="tokens",
                    text_image_size=0, prompt_len=0, naflex={})
    # text_format "render": text is an image of text_image_size (0: image_size); prompt_len > 0: every example
    # also has a random task prompt of that many ids; naflex (`vlm_jax.data.naflex.CONFIG_DEFAULTS`): NaFlex
    # batches of random aspect ratios (image-text pairs only).

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.vocab_size = int(cfg["vocab_size"])
        if self.vocab_size < 4:
            raise ValueError(f"data.vocab_size must be >= 4, got {self.vocab_size}")
        if cfg["text_format"] not in ("tokens", "render"):
            raise ValueError(f"data.text_format must be 'tokens' or 'render', got {cfg['text_format']!r}")
        self.text_image_size = (int(cfg["text_image_size"]) or self.image_size) if cfg["text_format"] == "render" else 0
        self.prompt_len = int(cfg["prompt_len"])
        self.naflex = naflex_lib.from_config(cfg["naflex"])
        if self.naflex is not None and (self.text_image_size or self.prompt_len):
            raise ValueError("data.naflex on synthetic data makes image-text pairs only: unset data.text_format="
                             "'render' / data.prompt_len")

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of text inputs: token ids, or text images when rendering."""
        if self.text_image_size:
            return (batch_size, self.text_image_size, self.text_image_size, 3), np.dtype(np.float32)
        return (batch_size, self.text_len), np.dtype(np.int32)

    def prompt_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of prompts."""
        return (batch_size, self.prompt_len), np.dtype(np.int32)

    def tokenize_prompt(self, prompts: list[str]) -> np.ndarray:
        """Prompts folded into the vocabulary like `tokenize`, int32 [N, prompt_len] (a long prompt keeps its end)."""
        return self.tokenize_prompt_checked(prompts)[0]

    def tokenize_prompt_checked(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`tokenize_prompt` and bool [N]: whether each prompt was cut to fit prompt_len."""
        return self._fold(prompts, self.prompt_len, keep_end=True)

    def prompt_tasks(self) -> dict[str, Any]:
        """Random data has no evaluation tasks."""
        return {}

    @property
    def special_ids(self) -> dict[str, int]:
        """Decoder token ids: pad 0, eos 2, and bos / mask after the vocabulary."""
        return dict(pad=0, eos=2, bos=self.vocab_size, mask=self.vocab_size + 1, vocab=self.vocab_size + 2)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token ids as space-separated numbers up to EOS (synthetic text has no words)."""
        out = []
        for row in np.asarray(ids).reshape(-1, np.shape(ids)[-1]).tolist():
            row = row[: row.index(2)] if 2 in row else row
            out.append(" ".join(str(t) for t in row if t))
        return out

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Byte-level ids folded into the vocabulary (stable, not meaningful), int32 [N, text_len]; or renders."""
        if self.text_image_size:
            from vlm_jax.data.render_text import render_to_float
            return render_to_float(texts, self.text_image_size)
        return self._fold(texts, self.text_len)[0]

    def _fold(self, texts: list[str], size: int, keep_end: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """int32 [N, size] byte ids + EOS, cut to size - 1 ids (keeping the end with `keep_end`); bool [N] cut."""
        out, cut = np.zeros((len(texts), size), np.int32), np.zeros(len(texts), bool)
        for i, t in enumerate(texts):
            ids = [3 + b % (self.vocab_size - 3) for b in t.encode()]
            cut[i] = len(ids) > size - 1
            ids = (ids[len(ids) - (size - 1):] if keep_end and cut[i] else ids[:size - 1]) + [2]
            out[i, :len(ids)] = ids
        return out, cut

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """This process's shard of an endless, resumable stream of random pairs."""
        ds = grain.MapDataset.range(NUM_EXAMPLES)[process_index::process_count]
        if self.naflex is not None:
            sample = _Sample(seed, self.image_size, self.text_len, self.vocab_size)
            ds = ds.batch(batch_size, drop_remainder=True).map_with_index(_NaFlexBatch(sample, self.naflex))
            return ds.to_iter_dataset()
        ds = ds.map(_Sample(seed, self.image_size, self.text_len, self.vocab_size, text_image_size=self.text_image_size,
                            prompt_len=self.prompt_len))
        return ds.batch(batch_size, drop_remainder=True).to_iter_dataset()

    def eval_sets(self, names: list[str]) -> dict[str, Any]:
        """Random data has no evaluation sets."""
        return {}

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Random data has nothing to evaluate: `evals.sets` must be empty."""
        sets = list(config.get("sets", []) or [])
        if sets:
            raise ValueError(f"evals.sets {sets}: synthetic data has no evaluation sets; set evals.sets=[]")
        return {}
