"""What the datasets share, importing none of them: datasets by name (`config.data.name`), the data folder,
read-only mode, image preparation for evaluation, and the SentencePiece-text mixin.

A dataset module registers its class with `@register(name)`; `get` imports the module named in `DATASETS` the
first time the name is asked for, so no module imports the datasets just to register them (no import cycle).
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import hashlib
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np

from vlm_jax.data import naflex as naflex_lib
from vlm_jax.data import ops
from vlm_jax.data.tokenizer import Tokenizer

PIXEL_BASELINE_SIZE = 16  # the raw-pixel nearest neighbour is strongest at 16 px (measured 8–64 px)
DATASETS = {  # name → the module that registers it (imported on first use)
    "emoji": "vlm_jax.data.image_text",
    "synthetic": "vlm_jax.data.synthetic",
    "tuxpaint": "vlm_jax.data.tuxpaint.dataset",
    "scenes": "vlm_jax.data.scene_pairs",
    "multitask": "vlm_jax.data.multitask",
    "shards": "vlm_jax.data.shards.dataset",
    "checkpoint": "vlm_jax.data.checkpoint_text",
    "text_corpus": "vlm_jax.data.text_lm",
}
_REGISTRY: dict[str, type] = {}
_READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("vlm_jax_data_read_only", default=False)


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a dataset to the registry (built-in names must also be in `DATASETS`)."""
    def wrap(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls
    return wrap


def dataset_class(name: str) -> type:
    """The class registered as `name`, importing its module on first use; raises naming the valid names."""
    if name not in _REGISTRY and name in DATASETS:
        importlib.import_module(DATASETS[name])
        if name not in _REGISTRY:
            raise RuntimeError(f"{DATASETS[name]} does not register dataset {name!r}")
    if name not in _REGISTRY:
        raise ValueError(f"Unknown dataset '{name}'; valid: {sorted(set(DATASETS) | set(_REGISTRY))}")
    return _REGISTRY[name]


def get(config: ml_collections.ConfigDict) -> Any:
    """Instantiates `config.name` (default "emoji")."""
    return dataset_class(config.get("name", "emoji"))(config)


def default_data_dir() -> str:
    """$VLM_JAX_DATA_DIR, else ./data_cache."""
    return os.environ.get("VLM_JAX_DATA_DIR", "data_cache")


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Datasets made inside read what is prepared and build nothing: no download (apt-get, npm), no unpacking, no
    dataset or tokenizer build; missing data raises `FileNotFoundError` naming it. For loading a trained run."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def is_read_only() -> bool:
    """Whether this context is inside `read_only()`."""
    return _READ_ONLY.get()


def not_prepared(what: str, data_dir: str | Path, how: str) -> FileNotFoundError:
    """The error for data that `read_only()` may not build: names it, where it was looked for and `how` to make it."""
    return FileNotFoundError(f"{what} not prepared in {data_dir}, and a run being loaded only reads existing data "
                             f"(nothing is downloaded or built): prepare it with {how}, or point data.data_dir (or "
                             f"$VLM_JAX_DATA_DIR) at the data the run was trained on")


def memo_by_content(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """`fn(array, *args)` computed once per process for equal array bytes and args (a few recent results kept);
    the results are read-only. Evaluation sets are rebuilt by every run and test from the same images."""
    cache: collections.OrderedDict = collections.OrderedDict()

    @functools.wraps(fn)
    def wrapped(array: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        array = np.asarray(array)
        key = (hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).ravel(), digest_size=16).digest(),
               array.shape, str(array.dtype), args, tuple(sorted(kwargs.items())))
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        out = fn(array, *args, **kwargs)
        out.flags.writeable = False
        cache[key] = out
        if len(cache) > 16:
            cache.popitem(last=False)
        return out

    return wrapped


@memo_by_content
def prep_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N,h,w,3] → float32 [N,size,size,3] in [-1, 1]."""
    return np.stack([ops.normalize(ops.resize(im, size)) for im in images]) if len(images) else \
        np.zeros((0, size, size, 3), np.float32)


class ImageInputs:
    """Mixin for datasets with images: the shapes of a batch of model image inputs — [B, S, S, 3] float images, or
    NaFlex patch batches (`data.naflex`) at the largest training budget."""

    image_size: int
    naflex: naflex_lib.Budgets | None = None  # set from `data.naflex` by datasets that serve native-aspect images

    def image_spec(self, batch_size: int) -> Any:
        """jax.ShapeDtypeStruct (fixed resolution) or a dict of them (NaFlex) for `batch_size` images."""
        import jax

        if self.naflex is None:
            return jax.ShapeDtypeStruct((batch_size, self.image_size, self.image_size, 3), np.float32)
        return {k: jax.ShapeDtypeStruct(shape, dtype)
                for k, (shape, dtype) in naflex_lib.spec(batch_size, self.naflex.patch, self.naflex.largest).items()}


class TokenizerText(ImageInputs):
    """Mixin for datasets whose text goes through a SentencePiece `self.tokenizer`: vocabulary and special ids."""

    tokenizer: Tokenizer

    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary size (the text tower's embedding rows)."""
        return self.tokenizer.vocab_size

    @property
    def special_ids(self) -> dict[str, int]:
        """Decoder token ids: pad, eos, bos, mask, and the decoder vocabulary size (`vocab`)."""
        t = self.tokenizer
        return dict(pad=t.pad_id, eos=t.eos_id, bos=t.bos_id, mask=t.mask_id, vocab=t.decoder_vocab_size)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token ids → strings (stops at EOS)."""
        return self.tokenizer.decode(ids)
