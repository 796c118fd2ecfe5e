"""Dataset "tuxpaint": the training stream of the Tux Paint stamps (one concept per caption) and their held-out
image → caption retrieval sets."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.data import augment, pipeline, robust
from vlm_jax.data import naflex as naflex_lib
from vlm_jax.data.base import PIXEL_BASELINE_SIZE, TokenizerText, default_data_dir, prep_images, register
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.data.tuxpaint import stamps
from vlm_jax.data.tuxpaint.build import PREPARED_SIZE, data_source, load_split, prepare, tokenizer_path, translations
from vlm_jax.evals.zeroshot import EvalSet, ZeroShotEvaluator
from vlm_jax.config_audit import merged


class _Preprocess(pipeline.AugmentingMap):
    """PNG → augmentation parameters (`collate` augments a batch); caption (in a language drawn per example,
    English where missing) → tokens (a caption cut to text_len is counted, `robust.TRUNCATED`); stamp id → its
    concept (`concepts`; the id itself when absent).

    An undecodable / oversized image or an empty / non-UTF-8 caption yields {robust.BAD: reason}.
    """

    def __init__(self, tok: Tokenizer, image_size: int, text_len: int, augment: dict,
                 languages: tuple[str, ...] = ("en",), max_pixels: int = pipeline.MAX_PIXELS,
                 concepts: dict[int, int] | None = None):
        self.tok, self.image_size, self.text_len = tok, image_size, text_len
        self.augment, self.languages, self.max_pixels = dict(augment), tuple(languages), max_pixels
        self.concepts = dict(concepts or {})

    def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image, reason = robust.decode_image(ex["image"], self.max_pixels)
        if image is None:
            return {robust.BAD: reason}
        caption = robust.decode_caption(ex["caption"])
        if caption is None:
            return {robust.BAD: "caption"}
        if self.languages != ("en",):  # no draw for English-only runs
            lang = self.languages[int(rng.integers(len(self.languages)))]
            if lang != "en":
                caption = translations(ex.get("translations")).get(lang) or caption
        ids, cut = self.tok.encode_checked([caption], self.text_len)
        stamp = int(ex["id"])
        return {"image": image, "augment": augment.draw(rng, self.augment, image.shape), "text": ids[0],
                "concept": np.int32(self.concepts.get(stamp, stamp)), robust.TRUNCATED: ("text",) if cut[0] else ()}


@register("tuxpaint")
class TuxPaintPairs(TokenizerText):
    """Tux Paint stamps with their English descriptions; held-out stamps for image→caption retrieval."""

    DEFAULTS = dict(name="tuxpaint", data_dir="", image_size=32, text_len=32, augment={}, num_threads=-1,
                    languages=("en",), naflex={})
    # languages: caption languages drawn per example ("en" or codes of the .txt files, e.g. "de", "pt_BR");
    # a stamp without that translation keeps its English caption. text_len 32 holds 98.6% of the train captions.
    # naflex: {budgets, patch, eval_budgets} (`data.naflex.CONFIG_DEFAULTS`): train on the stamps at their own
    # aspect ratio (the n64 images) as NaFlex patch batches, a budget drawn per batch, and evaluate at each
    # eval budget ("tuxpaint/test@<budget>"); image_size then only sizes the pixel baseline's inputs.

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.data_dir = cfg["data_dir"] or default_data_dir()
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.augment = dict(cfg["augment"] or {})
        self.num_threads = int(cfg["num_threads"])
        self.languages = tuple(cfg["languages"])
        self.naflex = naflex_lib.from_config(cfg["naflex"])
        prepare(self.data_dir, PREPARED_SIZE)
        if self.naflex is not None:
            prepare(self.data_dir, PREPARED_SIZE, native=True)
        self.tokenizer = Tokenizer(tokenizer_path(self.data_dir, PREPARED_SIZE))
        if self.languages != ("en",):
            known = {"en"}.union(*self._split("train")["translations"])
            unknown = [lang for lang in self.languages if lang not in known]
            if unknown:
                raise ValueError(f"data.languages {unknown} not in the stamp translations; valid: {sorted(known)}")

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] token ids."""
        return self.tokenizer.encode(texts, self.text_len)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of model text inputs."""
        return (batch_size, self.text_len), np.dtype(np.int32)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """Shuffled, augmented, tokenised, batched grain dataset of this process's shard of the train stamps."""
        src = data_source(self.data_dir, "train", PREPARED_SIZE, encoded_images=True, native=self.naflex is not None)
        rows = src.__getitems__(list(range(len(src))))
        concepts = stamps.concept_ids([int(r["id"]) for r in rows], [robust.decode_caption(r["caption"]) for r in rows])
        preprocess = _Preprocess(self.tokenizer, self.image_size, self.text_len, self.augment, self.languages,
                                 concepts=concepts)
        return pipeline.train_stream(src, preprocess, batch_size=batch_size, seed=seed, process_index=process_index,
                                     process_count=process_count, num_threads=self.num_threads,
                                     name=f"vlm_tuxpaint train split in {self.data_dir}", naflex=self.naflex)

    def _split(self, split: str) -> dict[str, Any]:
        return load_split(self.data_dir, split, PREPARED_SIZE)

    def eval_sets(self, names: list[str]) -> dict[str, EvalSet]:
        """"tuxpaint/test": test images → their captions among all test captions, with the pixel-NN captioner."""
        unknown = [n for n in names if n != "tuxpaint"]
        if unknown:
            raise ValueError(f"Unknown eval sets {unknown} for data 'tuxpaint'; valid: ['tuxpaint']")
        sets: dict[str, EvalSet] = {}
        if "tuxpaint" in names:
            test, train = self._split("test"), self._split("train")
            categories = np.asarray(test["category"])
            big = [c for c, n in collections.Counter(test["category"]).most_common() if n >= 10]
            common = dict(
                class_names=list(test["caption"]), class_images=None, retrieval=True,
                subsets={c: categories == c for c in big},
                pixel_images=prep_images(test["image"], PIXEL_BASELINE_SIZE),
                references=[[c] for c in test["caption"]],
                caption_pool_pixels=prep_images(train["image"], PIXEL_BASELINE_SIZE),
                caption_pool_texts=list(train["caption"]))
            labels = np.arange(len(test["caption"]))
            if self.naflex is None:
                sets["tuxpaint/test"] = EvalSet(images=prep_images(test["image"], self.image_size), labels=labels,
                                                **common)
            else:  # the same stamps (both splits sorted by id) at their own aspect ratio, at each eval budget
                native = load_split(self.data_dir, "test", PREPARED_SIZE, native=True)
                if native["path"] != test["path"]:
                    raise ValueError(f"vlm_tuxpaint n{PREPARED_SIZE} and s{PREPARED_SIZE} hold different test stamps "
                                     f"in {self.data_dir}: delete both and prepare again")
                for budget in self.naflex.eval:
                    images = naflex_lib.eval_inputs(native["image"], self.naflex.patch, budget)
                    sets[f"tuxpaint/test@{budget}"] = EvalSet(images=images, labels=labels, **common)
        return sets

    def _language_sets(self, sets: dict[str, EvalSet], languages: list[str]) -> dict[str, EvalSet]:
        """Each test set again with captions in each language (English where a stamp lacks it)."""
        stored = self._split("test")["translations"]
        return {f"{name}/{lang}": dataclasses.replace(
                    base, class_names=[t.get(lang) or en for t, en in zip(stored, base.class_names)])
                for name, base in sets.items() for lang in languages}

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Zero-shot image→caption (and caption→image) retrieval among the test stamps."""
        sets = self.eval_sets(list(config.get("sets", ["tuxpaint"])))
        languages = [lang for lang in (config.get("languages", []) or []) if lang != "en"]
        if languages:
            sets.update(self._language_sets(dict(sets), languages))
        templates = list(config.get("templates", None) or ["{}"])
        return {"zeroshot": ZeroShotEvaluator(embedder, sets, templates)}
