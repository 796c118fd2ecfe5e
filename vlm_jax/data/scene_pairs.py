"""Dataset "scenes": labelled emoji scenes (`data.scenes.labelled_scene`: counts, colours, sizes, a relation, exact
masks and boxes) drawn on the fly as image–caption pairs, and held-out scenes of the OpenMoji drawings for
image ↔ caption retrieval and the compositional probes (`evals.compositional`)."""
from __future__ import annotations

import functools
from typing import Any

import grain
import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data import augment, emoji_tfds, pipeline
from vlm_jax.data.base import PIXEL_BASELINE_SIZE, TokenizerText, default_data_dir, prep_images, register
from vlm_jax.data.scenes import LabelledScene, labelled_scene, labelled_scenes
from vlm_jax.evals.zeroshot import EvalSet, ZeroShotEvaluator

PREPARED = 64  # the emoji drawings' prepared size


def seen_drawings(data_dir: str, styles: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """uint8 drawings of the seen, non-flag concepts in `styles` (the scenes' objects), and their English names."""
    images, names = [], []
    for style in styles:
        split = emoji_tfds.load_split(data_dir, style, PREPARED)
        keep = np.flatnonzero(np.asarray(split["seen"], bool) & ~np.asarray(split["is_flag"], bool))
        images.append(np.asarray(split["image"])[keep])
        names += [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(split["name"])[keep]]
    return np.concatenate(images), names


class _SceneMap(pipeline.AugmentingMap):
    """Index → a scene drawn from the example's own generator (deterministic by seed and index) → the canvas and
    its caption's tokens; `collate` resizes the batch's canvases to image_size."""

    def __init__(self, drawings: np.ndarray, names: list[str], tokenize: Any, image_size: int, scene_size: int,
                 max_count: int, distractors: int):
        self.drawings, self.names, self.tokenize = drawings, names, tokenize
        self.image_size, self.scene_size, self.augment = image_size, scene_size, {}
        self.max_count, self.distractors = max_count, distractors

    def random_map(self, index: Any, rng: np.random.Generator) -> dict[str, Any]:
        del index  # the generator grain derives from (seed, index) decides the scene
        s = labelled_scene(self.drawings, self.names, self.scene_size, rng, self.max_count, self.distractors)
        return {"image": s.image, "augment": augment.draw(rng, {}, s.image.shape),
                "text": self.tokenize([s.caption])[0]}


@register("scenes")
class ScenePairs(TokenizerText):
    """Scenes of the seen, non-flag concepts in the training styles; held-out scenes of their OpenMoji drawings."""

    DEFAULTS = dict(name="scenes", data_dir="", image_size=32, text_len=32, scene_size=64, max_count=3,
                    distractors=1, train_styles=("noto", "twitter", "facebook"), eval_scenes=500, length=1 << 20,
                    num_threads=-1)
    # scene_size: the canvas the objects are drawn on (then resized to image_size); max_count: copies of the
    # caption's subject (1 … max_count); distractors: uncaptioned objects per scene; eval_scenes: held-out scenes
    # (seed 1) for retrieval and the probes; length: scenes per epoch (each epoch draws new ones: the scene is a
    # function of the example's generator). No image augmentation: a flip or crop would falsify the captions.

    def __init__(self, config: ml_collections.ConfigDict):
        from vlm_jax.data.image_text import text_tokenizer

        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.data_dir = cfg["data_dir"] or default_data_dir()
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.scene_size, self.max_count = int(cfg["scene_size"]), int(cfg["max_count"])
        self.distractors, self.eval_scenes = int(cfg["distractors"]), int(cfg["eval_scenes"])
        self.train_styles, self.length = tuple(cfg["train_styles"]), int(cfg["length"])
        self.num_threads = int(cfg["num_threads"])
        if "openmoji" in self.train_styles:
            raise ValueError("data.train_styles must leave 'openmoji' out: its drawings are the held-out scenes")
        emoji_tfds.prepare(self.data_dir, image_size=PREPARED)
        self.tokenizer = text_tokenizer("sentencepiece", self.data_dir, None)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] token ids."""
        return self.tokenizer.encode(texts, self.text_len)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        return (batch_size, self.text_len), np.dtype(np.int32)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """Freshly drawn scenes, deterministic by (seed, global index) and exactly resumable."""
        drawings, names = seen_drawings(self.data_dir, self.train_styles)
        preprocess = _SceneMap(drawings, names, self.tokenize, self.image_size, self.scene_size, self.max_count,
                               self.distractors)
        return pipeline.train_stream(grain.MapDataset.range(self.length), preprocess, batch_size=batch_size,
                                     seed=seed, process_index=process_index, process_count=process_count,
                                     num_threads=self.num_threads, name="labelled scenes")

    @functools.cached_property
    def held_out(self) -> tuple[list[LabelledScene], list[str]]:
        """The eval scenes (OpenMoji drawings, seed 1) and the names they index."""
        drawings, names = seen_drawings(self.data_dir, ("openmoji",))
        return labelled_scenes(drawings, names, self.eval_scenes, self.scene_size, seed=1, max_count=self.max_count,
                               distractors=self.distractors), names

    def eval_sets(self, names: list[str]) -> dict[str, EvalSet]:
        """"scenes": each held-out scene → its caption among all held-out captions (and back)."""
        unknown = [n for n in names if n != "scenes"]
        if unknown:
            raise ValueError(f"Unknown eval sets {unknown} for data 'scenes'; valid: ['scenes']")
        if not names:
            return {}
        scenes, _ = self.held_out
        images = np.stack([s.image for s in scenes])
        captions = [s.caption for s in scenes]
        return {"scenes/test": EvalSet(images=prep_images(images, self.image_size), labels=np.arange(len(scenes)),
                                       class_names=captions, class_images=None, retrieval=True,
                                       pixel_images=prep_images(images, PIXEL_BASELINE_SIZE),
                                       references=[[c] for c in captions])}

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Retrieval among the held-out captions and the compositional probes on the same scenes."""
        from vlm_jax.evals.compositional import ProbeEvaluator

        sets = self.eval_sets(list(config.get("sets", ["scenes"])))
        if not sets:
            return {}
        scenes, names = self.held_out
        return {"zeroshot": ZeroShotEvaluator(embedder, sets, ["{}"]),
                "probes": ProbeEvaluator(embedder, scenes, names, self.image_size, self.max_count)}
