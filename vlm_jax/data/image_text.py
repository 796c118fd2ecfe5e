"""Dataset "emoji": Noto-rendered emoji with their CLDR names (`EmojiPairs`).

Also the place the objectives find every dataset by name: `get`, `register` and the shared helpers are
re-exported from `vlm_jax.data.base`, which imports the dataset modules lazily.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.data import emoji as emoji_lib
from vlm_jax.data import emoji_tfds, fashion_mnist, multilingual, ops, pipeline, scenes
from vlm_jax.data.base import (PIXEL_BASELINE_SIZE, TokenizerText, dataset_class, default_data_dir,  # noqa: F401
                               get, prep_images, register)
from vlm_jax.data.shards import config as shard_config
from vlm_jax.data.tokenizer import EVAL_TEMPLATE, TRAIN_TEMPLATES, Tokenizer
from vlm_jax.evals.dense import DenseSet
from vlm_jax.evals.probe import ProbeSet
from vlm_jax.evals.zeroshot import EvalSet, ZeroShotEvaluator
from vlm_jax.config_audit import merged

PREPARED_SIZE = 64  # emoji are stored at 64 px and resized to the model resolution at load time
_prep_images = prep_images  # the former name (tests/test_generative.py)

# An emoji per Fashion-MNIST class: the training-style reference image of the pixel baseline.
FASHION_EMOJI = {"t-shirt/top": "👕", "trouser": "👖", "pullover": "🧥", "dress": "👗", "coat": "🥼",
                 "sandal": "👡", "shirt": "👔", "sneaker": "👟", "bag": "👜", "ankle boot": "👢"}


TOKENIZERS = ("sentencepiece", "minilm", "text_corpus")


def text_tokenizer(name: str, data_dir: str, max_concepts: int | None) -> Any:
    """The caption tokenizer `data.tokenizer` names (naming the valid ones on error)."""
    if name == "sentencepiece":
        return Tokenizer(emoji_tfds.tokenizer_path(data_dir, PREPARED_SIZE, max_concepts))
    if name == "minilm":
        from vlm_jax.data.wordpiece import WordPieceTokenizer
        from vlm_jax.pretrained import minilm_dir

        return WordPieceTokenizer(minilm_dir() / "vocab.txt")
    if name == "text_corpus":
        from vlm_jax.data import text_corpus

        return Tokenizer(text_corpus.build(data_dir) / "tokenizer.model")
    raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}, got {name!r}")


@register("emoji")
class EmojiPairs(TokenizerText):
    """Noto-rendered emoji with their CLDR names; cross-style (OpenMoji) and unseen-concept evaluation."""

    DEFAULTS = dict(name="emoji", data_dir="", image_size=32, text_len=16, augment={}, templates=None,
                    max_concepts=0, num_threads=-1, train_styles=("noto",), languages=("en",),
                    text_format="tokens", text_image_size=0, font_size=16, max_chars=0, sampling="examples",
                    tokenizer="sentencepiece", shards=None, caption_noise=0.0, example_ids=False,
                    caption_rewrites=0.0, alt_captions=False, name_texts=False)
    # tokenizer: "sentencepiece" (trained on the captions, data/tokenizer.py), "minilm" (the packaged MiniLM's
    # uncased WordPiece, for its pretrained text tower) or "text_corpus" (the language model's, data/text_corpus.py,
    # for captioning through a frozen LM). text_format "tokens": token ids [text_len]; "render": text drawn with GNU Unifont as an image
    # [text_image_size (0: image_size)]² × 3 in [-1, 1] (CLIPPO). languages: caption languages drawn per example.
    # sampling "examples": every (concept, style) example once per epoch; "concepts": every concept once per
    # epoch in one random style, so no batch counts another drawing of its own concept as a negative.
    # shards: train from webdataset / parquet shards (`python -m vlm_jax.tools.make_shards --dataset emoji`) instead
    # of the prepared TFDS data, with the same captions, templates and augmentation (`data/shards/config.py`).
    # caption_noise: the share of training captions that name another (seen) concept instead of the image's, drawn
    # per example (ALIGN's noisy alt-text, simulated; the noise study of docs/contrastive_family.md); evaluation
    # sets stay clean. caption_rewrites: the share of training captions that use another English name of their
    # emoji from the packaged tables (`data/rewrites.py`; LaCLIP's text augmentation without a language model).
    # alt_captions: training batches carry "caption", a second caption of each image's true concept (another of its
    # English names when the tables have one) in an independently drawn template, never noised (ALIP's
    # synthetic-caption path; needs the TFDS data, tokens, English). name_texts: training batches carry "summary"
    # (the name the caption uses, alone, noised with it) and "tags" (the image's own name, alone): PyramidCLIP's
    # summarised text and detector tags (same needs).
    # example_ids: training batches carry "example", each example's stable id (0 … the number of
    # training examples − 1, `num_train_examples`), for objectives with per-example state (NLIP).

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.data_dir = cfg["data_dir"] or default_data_dir()
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.augment = dict(cfg["augment"] or {})
        self.templates = list(cfg["templates"] or TRAIN_TEMPLATES)
        self.max_concepts = int(cfg["max_concepts"]) or None
        self.num_threads = int(cfg["num_threads"])
        self.train_styles = tuple(cfg["train_styles"])
        self.sampling = cfg["sampling"]
        if self.sampling not in pipeline.SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {pipeline.SAMPLINGS}, got {self.sampling!r}")
        self.languages = tuple(cfg["languages"])
        for lang in self.languages:
            multilingual.names(lang)  # validates the language code
        self.text_format = cfg["text_format"]
        if self.text_format not in ("tokens", "render"):
            raise ValueError(f"data.text_format must be 'tokens' or 'render', got {self.text_format!r}")
        self.shards = shard_config.section(config)
        self.caption_noise = float(cfg["caption_noise"] or 0.0)
        self.example_ids = bool(cfg["example_ids"])
        self.caption_rewrites = float(cfg["caption_rewrites"] or 0.0)
        self.alt_captions = bool(cfg["alt_captions"])
        self.name_texts = bool(cfg["name_texts"])
        for key in ("alt_captions", "name_texts"):
            if getattr(self, key) and (shard_config.enabled(self.shards) or cfg["text_format"] != "tokens"
                                       or self.languages != ("en",)):
                raise ValueError(f"data.{key} draws English names for the prepared TFDS captions: it needs "
                                 "data.text_format='tokens', data.languages=('en',) and no data.shards")
        if not 0.0 <= self.caption_rewrites <= 1.0:
            raise ValueError(f"data.caption_rewrites is a probability in [0, 1], got {self.caption_rewrites}")
        if self.caption_rewrites and (shard_config.enabled(self.shards) or cfg["text_format"] != "tokens"
                                      or self.languages != ("en",)):
            raise ValueError("data.caption_rewrites draws English names for the prepared TFDS captions: it needs "
                             "data.text_format='tokens', data.languages=('en',) and no data.shards")
        if self.example_ids and shard_config.enabled(self.shards):
            raise ValueError("data.example_ids numbers the prepared TFDS examples: unset data.shards.urls")
        if not 0.0 <= self.caption_noise < 1.0:
            raise ValueError(f"data.caption_noise is a probability in [0, 1), got {self.caption_noise}")
        if self.caption_noise and (shard_config.enabled(self.shards) or cfg["text_format"] != "tokens"):
            raise ValueError("data.caption_noise replaces the captions of the prepared TFDS data: it needs "
                             "data.text_format='tokens' and no data.shards")
        if shard_config.enabled(self.shards) and (self.sampling != "examples" or self.languages != ("en",)):
            raise ValueError("data.shards trains on each shard sample once per epoch with its English caption: "
                             "data.sampling='concepts' and data.languages other than ('en',) need the TFDS data "
                             "(unset data.shards.urls)")
        emoji_tfds.prepare(self.data_dir, image_size=PREPARED_SIZE, max_concepts=self.max_concepts)
        self.tokenizer = text_tokenizer(cfg["tokenizer"], self.data_dir, self.max_concepts)
        self.renderer = None
        if self.text_format == "render":
            from vlm_jax.data.render_text import TextRenderer

            self.renderer = TextRenderer(image_size=int(cfg["text_image_size"]) or self.image_size,
                                         font_size=int(cfg["font_size"]), max_chars=int(cfg["max_chars"]) or None)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Model text inputs: int32 [N, text_len] token ids, or rendered float32 [N, S, S, 3] (text_format)."""
        if self.renderer is not None:
            return ops.normalize(self.renderer.render_batch(texts))
        return self.tokenizer.encode(list(texts), self.text_len)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of model text inputs."""
        if self.renderer is not None:
            s = self.renderer.image_size
            return (batch_size, s, s, 3), np.dtype(np.float32)
        return (batch_size, self.text_len), np.dtype(np.int32)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """Shuffled, augmented, tokenised, batched grain dataset of this process's shard."""
        if shard_config.enabled(self.shards):
            pre = shard_config.WebPreprocess(self.tokenize, self.image_size, self.augment, self.templates,
                                             fields=("concept",), max_pixels=pipeline.MAX_PIXELS)
            return shard_config.train_stream(self.shards, self.data_dir, pre, batch_size=batch_size, seed=seed,
                                             process_index=process_index, process_count=process_count,
                                             num_threads=self.num_threads)
        encode = self.tokenizer if isinstance(self.tokenizer, Tokenizer) and self.renderer is None else self.tokenize
        return pipeline.make_train_dataset(
            self.data_dir, "train", encode, image_size=self.image_size, text_len=self.text_len, languages=self.languages,
            batch_size=batch_size, seed=seed, augment=self.augment, templates=self.templates,
            process_index=process_index, process_count=process_count, prepared_size=PREPARED_SIZE,
            max_concepts=self.max_concepts, num_threads=self.num_threads, styles=self.train_styles,
            sampling=self.sampling, caption_noise=self.caption_noise, example_ids=self.example_ids,
            caption_rewrites=self.caption_rewrites, alt_captions=self.alt_captions, name_texts=self.name_texts)

    def num_train_examples(self) -> int:
        """How many examples one epoch of the (TFDS) training stream holds: the range of its example ids."""
        styles = self.train_styles
        if styles:
            return len(pipeline.train_source(self.data_dir, styles, PREPARED_SIZE, self.max_concepts))
        return len(emoji_tfds.data_source(self.data_dir, "train", PREPARED_SIZE, self.max_concepts))

    def held_out_pairs(self, style: str) -> tuple[np.ndarray, list[str]]:
        """(images float32 [R, S, S, 3] in [-1, 1] at the model's size, English names) of the seen concepts of a
        drawing style the training stream does not use (RA-CLIP's reference set); raises for a trained style."""
        if style in self.train_styles or style not in emoji_tfds.EXTRA_STYLES:
            raise ValueError(f"the reference style must be one of {list(emoji_tfds.EXTRA_STYLES)} and not among "
                             f"data.train_styles {list(self.train_styles)}, got {style!r}")
        split = self._split(style)
        seen = np.asarray(split["seen"], bool)
        images = prep_images(np.asarray(split["image"])[seen], self.image_size)
        return images, [n for n, s in zip(split["name"], seen) if s]

    def _split(self, split: str) -> dict[str, Any]:
        return emoji_tfds.load_split(self.data_dir, split, image_size=PREPARED_SIZE, max_concepts=self.max_concepts)

    def _style_references(self, noto: dict[str, Any], size: int) -> np.ndarray:
        """[S, C, size, size, 3]: each class drawn in every training style (Noto where a style lacks it)."""
        refs = []
        for style in self.train_styles:
            if style == "noto":
                refs.append(prep_images(noto["image"], size))
                continue
            other = self._split(style)
            by_concept = dict(zip(other["concept"].tolist(), other["image"]))
            images = [by_concept.get(int(c), img) for c, img in zip(noto["concept"], noto["image"])]
            refs.append(prep_images(np.stack(images), size))
        return np.stack(refs)

    def eval_sets(self, names: list[str]) -> dict[str, EvalSet]:
        """Cross-style (OpenMoji) seen concepts, unseen concepts, and Fashion-MNIST."""
        sets: dict[str, EvalSet] = {}
        if "emoji" in names:
            noto, omoji = self._split("noto"), self._split("openmoji")
            order = np.argsort(noto["concept"])
            noto = {k: np.asarray(v)[order] for k, v in noto.items()}
            index = {int(c): i for i, c in enumerate(noto["concept"])}
            labels = np.array([index[int(c)] for c in omoji["concept"]])
            names_all = [str(n) for n in noto["name"]]
            noto_img = prep_images(noto["image"], self.image_size)
            om_img = prep_images(omoji["image"], self.image_size)
            noto_px = self._style_references(noto, PIXEL_BASELINE_SIZE)
            om_px = prep_images(omoji["image"], PIXEL_BASELINE_SIZE)
            seen = np.asarray(omoji["seen"], bool)
            flag = np.asarray(omoji["is_flag"], bool)
            # captioning: every training caption of an image's concept is a reference; the pixel NN captions a
            # query with the eval prompt of its nearest training-style drawing of a *seen* concept
            refs = [[t.format(names_all[i]) for t in self.templates] for i in labels]
            seen_cls = np.flatnonzero(np.asarray(noto["seen"], bool))
            pool_px = noto_px[:, seen_cls].reshape(-1, *noto_px.shape[2:])
            pool_texts = [EVAL_TEMPLATE.format(names_all[i]) for i in seen_cls] * len(noto_px)
            caption_pool = dict(caption_pool_pixels=pool_px, caption_pool_texts=pool_texts)
            sets["emoji/cross"] = EvalSet(
                images=om_img[seen], labels=labels[seen], class_names=names_all, class_images=noto_img,
                subsets={"flag": flag[seen], "nonflag": ~flag[seen]},
                pixel_images=om_px[seen], pixel_class_images=noto_px,
                references=[r for r, s in zip(refs, seen) if s], **caption_pool)
            unseen_cls = np.flatnonzero(~np.asarray(noto["seen"], bool))
            remap = {int(c): j for j, c in enumerate(unseen_cls)}
            sets["emoji/unseen"] = EvalSet(
                images=om_img[~seen], labels=np.array([remap[int(l)] for l in labels[~seen]], int),
                class_names=[names_all[i] for i in unseen_cls], class_images=noto_img[unseen_cls],
                subsets={"flag": flag[~seen], "nonflag": ~flag[~seen]},
                pixel_images=om_px[~seen], pixel_class_images=noto_px[:, unseen_cls],
                references=[r for r, s in zip(refs, seen) if not s], **caption_pool)
        if "fashion_mnist" in names:
            images, labels = fashion_mnist.load_fashion_mnist("test")
            classes = list(fashion_mnist.CLASS_NAMES)
            refs = np.stack([emoji_lib.render(FASHION_EMOJI[c], "noto", PREPARED_SIZE) for c in classes])
            sets["fashion_mnist"] = EvalSet(
                images=prep_images(fashion_mnist.to_rgb(images, self.image_size), self.image_size),
                labels=np.asarray(labels, int), class_names=classes,
                class_images=prep_images(refs, self.image_size), retrieval=False,
                pixel_images=prep_images(fashion_mnist.to_rgb(images, PIXEL_BASELINE_SIZE), PIXEL_BASELINE_SIZE),
                pixel_class_images=prep_images(refs, PIXEL_BASELINE_SIZE))
        return sets

    def probe_sets(self, names: list[str], fashion_train: int = 10_000, fashion_test: int = 10_000
                   ) -> dict[str, ProbeSet]:
        """Image-only probe sets. "emoji": every training-style drawing of the seen concepts → their OpenMoji
        drawings (one class per concept); "fashion_mnist": the first `fashion_train` training and `fashion_test`
        test images."""
        sets: dict[str, ProbeSet] = {}
        if "emoji" in names:
            omoji = self._split("openmoji")
            seen = np.asarray(omoji["seen"], bool)
            classes = np.unique(np.asarray(omoji["concept"])[seen])
            index = {int(c): i for i, c in enumerate(classes)}
            raw, labels = [], []
            for style in self.train_styles:
                split = self._split(style)
                keep = np.array([int(c) in index for c in split["concept"]], bool)
                raw.append(np.asarray(split["image"])[keep])
                labels.append([index[int(c)] for c in np.asarray(split["concept"])[keep]])
            train, test = np.concatenate(raw), np.asarray(omoji["image"])[seen]
            sets["emoji"] = ProbeSet(
                train_images=prep_images(train, self.image_size),
                train_labels=np.concatenate(labels).astype(np.int64),
                test_images=prep_images(test, self.image_size),
                test_labels=np.array([index[int(c)] for c in np.asarray(omoji["concept"])[seen]], np.int64),
                num_classes=len(classes), pixel_train=prep_images(train, PIXEL_BASELINE_SIZE),
                pixel_test=prep_images(test, PIXEL_BASELINE_SIZE))
        if "fashion_mnist" in names:
            (tr_x, tr_y), (te_x, te_y) = (fashion_mnist.load_fashion_mnist(s) for s in ("train", "test"))
            prep = lambda x, size: prep_images(fashion_mnist.to_rgb(x, size), size)  # noqa: E731
            tr_x, tr_y, te_x, te_y = tr_x[:fashion_train], tr_y[:fashion_train], te_x[:fashion_test], te_y[:fashion_test]
            sets["fashion_mnist"] = ProbeSet(
                train_images=prep(tr_x, self.image_size), train_labels=tr_y, test_images=prep(te_x, self.image_size),
                test_labels=te_y, num_classes=len(fashion_mnist.CLASS_NAMES),
                pixel_train=prep(tr_x, PIXEL_BASELINE_SIZE), pixel_test=prep(te_x, PIXEL_BASELINE_SIZE))
        unknown = sorted(set(names) - {"emoji", "fashion_mnist"})
        if unknown:
            raise ValueError(f"unknown probe sets {unknown}; valid: ['emoji', 'fashion_mnist']")
        return sets

    def dense_sets(self, names: list[str], train_scenes: int = 2000, test_scenes: int = 1000) -> dict[str, DenseSet]:
        """"emoji": two-object scenes labelled per patch (8 × 8 px cells of the model input) with the emoji group of
        the object on top; fitted on training-style drawings of the seen concepts, scored on their OpenMoji
        drawings."""
        unknown = sorted(set(names) - {"emoji"})
        if unknown:
            raise ValueError(f"unknown dense sets {unknown}; valid: ['emoji']")
        if not names:
            return {}
        noto = self._split("noto")
        chars = {int(c): (e.decode() if isinstance(e, bytes) else str(e)) for c, e in zip(noto["concept"], noto["emoji"])}
        groups = sorted({emoji_lib.emoji_category(ch) for ch in chars.values()})
        group = {c: groups.index(emoji_lib.emoji_category(ch)) for c, ch in chars.items()}
        seen = {int(c) for c, s in zip(noto["concept"], noto["seen"]) if s}

        def drawings(split_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
            images, classes = [], []
            for split in split_names:
                data = self._split(split)
                keep = np.array([int(c) in seen for c in data["concept"]], bool)
                images.append(np.asarray(data["image"])[keep])
                classes += [group[int(c)] for c in np.asarray(data["concept"])[keep]]
            return np.concatenate(images), np.asarray(classes)

        grid = (self.image_size // 8, self.image_size // 8)
        train = scenes.scenes_with_labels(*drawings(self.train_styles), train_scenes, self.image_size, grid, seed=0)
        test = scenes.scenes_with_labels(*drawings(("openmoji",)), test_scenes, self.image_size, grid, seed=1)
        return {"emoji": DenseSet(*train, *test, class_names=["background", *groups])}

    def _language_sets(self, cross: EvalSet, languages: list[str]) -> dict[str, EvalSet]:
        """The cross-style set again with class names in each language (English where a name is missing)."""
        noto = self._split("noto")
        order = np.argsort(noto["concept"])
        chars = [str(e.decode() if isinstance(e, bytes) else e) for e in np.asarray(noto["emoji"])[order]]
        sets = {}
        for lang in languages:
            names = [multilingual.name_of(c, lang) or en for c, en in zip(chars, cross.class_names)]
            sets[f"emoji/cross/{lang}"] = dataclasses.replace(cross, class_names=names)
        return sets

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """One zero-shot/retrieval evaluator over the configured sets."""
        names = list(config.get("sets", ["emoji", "fashion_mnist"]))
        templates = list(config.get("templates", None) or [EVAL_TEMPLATE])
        sets = self.eval_sets(names)
        languages = list(config.get("languages", []) or [])
        if languages and "emoji/cross" in sets:
            sets.update(self._language_sets(sets["emoji/cross"], languages))
        return {"zeroshot": ZeroShotEvaluator(embedder, sets, templates)}

