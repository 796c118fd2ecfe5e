"""The data side of a converted checkpoint (`vlm_jax.tools.convert`): its tokenizer and input size, no training
stream and no evaluation sets of its own. `vlm_jax.load()` embeds, classifies and retrieves through it; to train
from the weights, start another config from the run with `init_from.workdir`."""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data.base import ImageInputs, register
from vlm_jax.data.checkpoint_tokenizers import CLEANS, KINDS, CheckpointTokenizer

RESIZES = ("shortest_crop", "squash")


@register("checkpoint")
class CheckpointText(ImageInputs):
    """Image size, text length and tokenizer of an imported checkpoint."""

    DEFAULTS = dict(name="checkpoint", image_size=224, text_len=77, vocab_size=0, tokenizer="", tokenizer_kind="",
                    tokenizer_clean="", image_resize="shortest_crop")
    # image_resize: how `vlm_jax.load()` sizes image files, as the checkpoint's library does: "shortest_crop"
    # (shortest side to image_size, bicubic, centre crop: CLIP, open_clip) or "squash" (both sides to image_size,
    # bicubic: SigLIP's image processor).
    # tokenizer: the tokenizer file copied into the run (tokenizer.json, spiece.model or a CLIP BPE .txt.gz);
    # "" when the checkpoint came without one (text is then refused). tokenizer_kind: checkpoint_tokenizers.KINDS.
    # tokenizer_clean: the text cleaning open_clip applies before an HF tokenizer (checkpoint_tokenizers.CLEANS;
    # "canonicalize" for its SigLIP models), "" for none.

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.vocab_size = int(cfg["vocab_size"])
        if cfg["image_resize"] not in RESIZES:
            raise ValueError(f"data.image_resize must be one of {RESIZES}, got {cfg['image_resize']!r}")
        self.image_resize = cfg["image_resize"]
        self.tokenizer: CheckpointTokenizer | None = None
        if cfg["tokenizer_clean"] and not cfg["tokenizer"]:
            raise ValueError("data.tokenizer_clean is set but data.tokenizer is empty: nothing to clean for")
        if cfg["tokenizer"]:
            if cfg["tokenizer_kind"] not in KINDS:
                raise ValueError(f"data.tokenizer_kind must be one of {KINDS}, got {cfg['tokenizer_kind']!r}")
            if cfg["tokenizer_clean"] not in CLEANS:
                raise ValueError(f"data.tokenizer_clean must be one of {CLEANS}, got {cfg['tokenizer_clean']!r}")
            self.tokenizer = CheckpointTokenizer(cfg["tokenizer_kind"], cfg["tokenizer"], self.text_len,
                                                 cfg["tokenizer_clean"])
            if self.tokenizer.vocab_size > self.vocab_size:
                raise ValueError(f"tokenizer {cfg['tokenizer']} has {self.tokenizer.vocab_size} ids but the text "
                                 f"tower's vocabulary has {self.vocab_size}: not this model's tokenizer")

    def prepare_image(self, image: Any) -> np.ndarray:
        """float32 [S, S, 3] in [-1, 1] from a path or PIL image, sized the way the checkpoint's library sizes it."""
        from PIL import Image

        img = Image.open(image) if not isinstance(image, Image.Image) else image
        img, s = img.convert("RGB"), self.image_size
        if self.image_resize == "squash":
            img = img.resize((s, s), Image.Resampling.BICUBIC)
        else:
            w, h = img.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
        return np.asarray(img, np.float32) * np.float32(1 / 127.5) - np.float32(1.0)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of token ids."""
        return (batch_size, self.text_len), np.dtype(np.int32)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] ids from the checkpoint's own tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this converted checkpoint has no tokenizer (its folder had no tokenizer.json, "
                             "spiece.model or bpe_simple_vocab*.txt.gz): convert again with --tokenizer FILE")
        return self.tokenizer.encode(list(texts))

    @property
    def special_ids(self) -> dict[str, int]:
        """Pad id of the tokenizer (0 without one); checkpoints carry no decoder ids."""
        pad = self.tokenizer.pad_id if self.tokenizer is not None else 0
        return dict(pad=pad, eos=pad, bos=self.vocab_size, mask=self.vocab_size + 1, vocab=self.vocab_size + 2)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Not offered: converted checkpoints are two-tower models, which never decode."""
        raise NotImplementedError("converted checkpoints have no text decoder")

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """No training stream: refuse, naming how to train from the weights."""
        raise ValueError("a converted checkpoint has no training data: train another config with "
                         "init_from.workdir=<this run> (and, for LiT, init_from.include='img/')")

    def eval_sets(self, names: list[str]) -> dict[str, Any]:
        """No evaluation sets of its own (the benchmark suite reads TFDS data: evals.suite)."""
        if names:
            raise ValueError(f"evals.sets {names}: a converted checkpoint has no evaluation sets of its own")
        return {}

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """None beyond the suite: `evals.sets` must be empty."""
        self.eval_sets(list(config.get("sets", []) or []))
        return {}
