"""Trained runs as Python objects: `vlm_jax.load(workdir)` → the model with its parameters, its image preparation
and text encoder, and methods to embed, classify zero-shot, retrieve and caption.

  run = vlm_jax.load("runs/default")
  run.classify(["cat.png"], ["cat", "dog", "pizza"], k=3)   # [[("cat", 0.81), ("dog", 0.12), ...]]
  run.retrieve(["a red apple"], images, k=5)                # indices and scores per query
  vlm_jax.load("runs/emoji_cappa").caption(["cat.png"])      # generative runs
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlm_jax.train.workdir import RUN_FORMAT, VERSION_FILE, RunLoadError, version, write_version  # noqa: F401


@dataclasses.dataclass
class Predictions:
    """Zero-shot top-k per image: names and probabilities, plus the full [N, C] probability matrix."""
    names: list[list[str]]
    probs: list[list[float]]
    matrix: np.ndarray

    def __iter__(self):
        return iter([list(zip(n, p)) for n, p in zip(self.names, self.probs)])


class TrainedRun:
    """A loaded run: `config`, `params`, `step`, `objective`, and inference methods."""

    def __init__(self, workdir: Path, setup: Any, params: Any, step: int):
        self.workdir, self.setup, self.params, self.step = workdir, setup, params, step
        self.config, self.objective = setup.config, setup.objective
        naflex = getattr(self.objective.data, "naflex", None)
        # a NaFlex run reads images at their own aspect ratio within this many patches (set it to another budget
        # to trade cost for detail); None: a fixed-resolution run
        self.budget: int | None = max(naflex.eval) if naflex is not None else None
        self._features: Any = None  # the jitted image-feature Embedder, made on first use

    def __repr__(self) -> str:
        return f"TrainedRun({str(self.workdir)!r}, objective={self.config.objective!r}, step={self.step})"

    @property
    def image_size(self) -> int:
        """The model's input resolution."""
        return int(self.objective.data.image_size)

    def preprocess(self, images: Any) -> Any:
        """float32 [N, S, S, 3] in [-1, 1] from file paths, PIL images, uint8 arrays ([H, W, 3|4] or [N, H, W, 3])
        or float arrays already in [-1, 1] at the model's size. Files and PIL images are prepared like the
        training drawings (cropped to the drawn pixels, centred on white), or, for a converted checkpoint, sized as
        its library sizes them. A NaFlex run gets a NaFlex batch at `budget` patches instead: each image at its own
        aspect ratio (files cropped to the drawn pixels on white, as its training stamps)."""
        from vlm_jax.data import ops

        if self.budget is not None:
            return self._naflex(images)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.dtype == np.uint8:
                return np.stack([ops.normalize(ops.resize(im, self.image_size)) for im in images])
            if images.shape[1:3] != (self.image_size, self.image_size):
                raise ValueError(f"float images must be [N, {self.image_size}, {self.image_size}, 3] in [-1, 1]; "
                                 f"got {images.shape} (pass uint8 arrays or files to have them resized)")
            return images.astype(np.float32)
        return np.stack([self._one(im) for im in images]) if len(images) else \
            np.zeros((0, self.image_size, self.image_size, 3), np.float32)

    def _naflex(self, images: Any) -> dict[str, np.ndarray]:
        """Images (as `preprocess` takes them; float ones in [-1, 1] of any size) → a NaFlex batch at `budget`."""
        from PIL import Image

        from vlm_jax.data import naflex
        from vlm_jax.data.emoji import drawing_rgba
        from vlm_jax.data.tuxpaint import PREPARED_SIZE
        from vlm_jax.data.tuxpaint.stamps import native_rgb

        def native(image: Any) -> np.ndarray:
            if isinstance(image, (str, Path, Image.Image)):
                rgba = drawing_rgba(image)
                rgb = native_rgb(rgba, PREPARED_SIZE)
                return np.asarray(rgba.convert("RGB")) if rgb is None else rgb
            arr = np.asarray(image)
            if arr.dtype == np.uint8:
                return arr[..., :3]
            return np.clip(np.round((arr[..., :3].astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)

        patch, arrays = self.objective.data.naflex.patch, [native(im) for im in images]
        out = naflex.eval_inputs(arrays or [np.zeros((patch, patch, 3), np.uint8)], patch, int(self.budget))
        return out if arrays else {k: v[:0] for k, v in out.items()}

    def _one(self, image: Any) -> np.ndarray:
        from PIL import Image

        from vlm_jax.data import ops
        from vlm_jax.data.emoji import prepare_drawing

        if isinstance(image, (str, Path, Image.Image)):
            # a dataset that knows how its images are sized (a converted checkpoint) prepares them; otherwise
            # files are prepared like the training drawings
            prepare = getattr(self.objective.data, "prepare_image", None)
            return prepare(image) if prepare is not None else prepare_drawing(image, self.image_size)
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            return ops.normalize(ops.resize(arr[..., :3], self.image_size))
        return arr.astype(np.float32)

    @property
    def _embedder(self) -> Any:
        embedder = getattr(self.objective, "embedder", None)
        if embedder is None:
            raise TypeError(f"objective {self.config.objective!r} has no image/text embedding (it is generative: "
                            "use caption())")
        return embedder

    def embed_images(self, images: Any) -> np.ndarray:
        """Unit-norm image embeddings [N, D]."""
        return self._embedder.images(self.params, self.preprocess(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings [N, D] (tokenized, or rendered for CLIPPO, as in training)."""
        return self._embedder.texts(self.params, list(texts))

    @property
    def templates(self) -> list[str]:
        """The prompt templates the run's zero-shot evaluator uses ("{}" when it has none)."""
        zeroshot = self.objective.evaluators().get("zeroshot")
        return list(getattr(zeroshot, "templates", None) or ["{}"])

    def class_embeddings(self, names: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """Prompt-ensembled class representations (the zero-shot evaluator's recipe): unit-norm embeddings, or for
        a token-wise run (FILIP) one token set per template."""
        return self._embedder.class_embeddings(self.params, list(names), list(templates or self.templates))

    def logits(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """The model's pair logits t·s (+ b for SigLIP), float64 [N, M]; s is the cosine, or FILIP's token-wise
        image→text similarity."""
        t = float(np.exp(np.float64(self.params["t"]))) if "t" in self.params else 1.0
        b = float(np.asarray(self.params["b"])) if "b" in self.params else 0.0
        scores, _ = self._embedder.similarity(np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64))
        return t * np.asarray(scores, np.float64) + b

    def image_features(self, images: Any) -> np.ndarray:
        """The image representation the run's linear probes read, float32 [N, F]: a two-tower run's pooled image
        tower before its projection, an MAE run's mean encoder token (objectives with `image_features`)."""
        fn = getattr(self.objective, "image_features", None)
        if fn is None:
            raise TypeError(f"objective {self.config.objective!r} has no image features for probes")
        if self._features is None:
            from vlm_jax.evals.embedder import Embedder

            self._features = Embedder(fn, None, None, batch_size=int(self.config.evals.get("batch_size", 256)),
                                      context=lambda: self.objective.trace_context())
        return self._features.features(self.params, self.preprocess(images))

    def match_scores(self, images: Any, texts: Sequence[str], how: str = "auto",
                     prompt: str | None = None) -> np.ndarray:
        """How well each image matches its text, float64 [N] (higher: better): "embedding" — the pair logit (cosine,
        or FILIP's token-wise similarity); "likelihood" — the caption's mean log-probability per token given the
        image (and `prompt` for a prompted run); "auto" — embedding when the run has one."""
        texts = list(texts)
        if how == "auto":
            how = "embedding" if getattr(self.objective, "embedder", None) is not None else "likelihood"
        if how == "embedding":
            emb = self.embed_images(images)
            out = np.empty(len(texts), np.float64)
            for start in range(0, len(texts), 512):  # the diagonal of each block of the pair logits
                rows = slice(start, start + 512)
                out[rows] = np.diagonal(self.logits(emb[rows], self.embed_texts(texts[rows])))
            return out
        if how != "likelihood":
            raise ValueError(f"how must be 'auto', 'embedding' or 'likelihood', got {how!r}")
        fns = getattr(self.objective, "caption_fns", None)
        if fns is None:
            raise TypeError(f"objective {self.config.objective!r} neither embeds nor generates text")
        if (prompt is None) != (fns.tokenize_prompt is None):
            raise ValueError("a prompted run scores captions after a prompt (e.g. prompt='caption en'); others take "
                             "none")
        ll, count = fns.pair_scores(self.params, self.preprocess(images), texts, prompt)
        return ll / np.maximum(count, 1)

    def classify(self, images: Any, names: Sequence[str], k: int = 5,
                 templates: Sequence[str] | None = None) -> Predictions:
        """Zero-shot top-k over `names`: softmax of the logits (independent sigmoids for a sigmoid-loss run)."""
        logits = self.logits(self.embed_images(images), self.class_embeddings(names, templates))
        if self.config.get("loss", {}).get("name") == "sigmoid":
            probs = 1 / (1 + np.exp(-logits))
        else:
            z = logits - logits.max(1, keepdims=True)
            probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return Predictions([[names[j] for j in row] for row in top],
                           [[float(probs[i, j]) for j in row] for i, row in enumerate(top)], probs)

    def retrieve(self, texts: Sequence[str], images: Any, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Text → image retrieval: (indices [T, k] into `images`, similarities [T, k]), best first."""
        sims = self._embedder.similarity(self.embed_images(images), self.embed_texts(texts))[1].T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return top, np.take_along_axis(sims, top, 1)

    def caption(self, images: Any = (), prompt: str | Sequence[str] | None = None, beam: int = 1,
                sample: dict[str, Any] | None = None) -> list[str]:
        """Captions of images (answers to `prompt` for a prompted run; no images: a text-only answer); greedy,
        beam search (`beam` > 1) or sampling (`sample`: temperature, top_k, top_p, seed)."""
        fns = getattr(self.objective, "caption_fns", None)
        if fns is None:
            raise TypeError(f"objective {self.config.objective!r} does not generate text")
        if prompt is not None and fns.tokenize_prompt is None:
            raise ValueError(f"objective {self.config.objective!r} takes no prompt (train a prompted one: 'pali')")
        if prompt is None and fns.tokenize_prompt is not None:
            raise ValueError("this run answers prompts: give one (prompt= here, --prompt in the tool; "
                             'e.g. "caption en")')
        if prompt is not None:
            self._warn_cut_prompts(prompt, max(len(images), 1))
        fns = fns.with_options(beam_size=beam, sampling=dict(sample) if sample else None)  # the evaluators' stay
        batch = self.preprocess(images) if len(images) else self.preprocess(  # text only: a grey square
            np.zeros((1, self.image_size, self.image_size, 3), np.float32))
        return fns.generate(self.params, batch, prompt)


    def _warn_cut_prompts(self, prompt: str | Sequence[str], n: int) -> None:
        """Warns (PromptTruncatedWarning) naming the prompts longer than the run's prompt_len: their start is cut."""
        checked = getattr(self.objective.data, "tokenize_prompt_checked", None)
        if checked is None:
            return
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        _, cut = checked(prompts)
        if np.any(cut):
            names = sorted({p for p, c in zip(prompts, cut) if c})
            warnings.warn(f"{len(names)} prompt(s) longer than this run's prompt_len "
                          f"{self.objective.data.prompt_len} tokens lose their start (the text at the end is kept): "
                          f"{names[:3]}", PromptTruncatedWarning, stacklevel=3)


class PromptTruncatedWarning(UserWarning):
    """A prompt given to `TrainedRun.caption` was longer than the run's prompt length and was cut."""


def load(workdir: str | Path, step: int | None = None, mesh: Sequence[Sequence[Any]] | None = None,
         overrides: Sequence[str] = ()) -> TrainedRun:
    """The run in `workdir` at its newest readable checkpoint (or `step`), on the run's mesh or `mesh`
    (e.g. [("data", -1)]), with `overrides` ("evals.batch_size=64", …) applied to its config."""
    from vlm_jax.train.workdir import restore_run

    setup, params, found = restore_run(workdir, step, mesh, overrides)
    return TrainedRun(Path(workdir), setup, params, found)
