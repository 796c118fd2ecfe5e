"""The standard zero-shot benchmarks: classification (ImageNet and its variants, CIFAR) and image↔text retrieval
(COCO Karpathy test) over prepared TFDS datasets, scored as `clip_benchmark` scores them and written in its JSON.

Class names and prompt templates are clip_benchmark's own data files (`clip_benchmark/datasets/en_classnames.json`,
`en_zeroshot_classification_templates.json`: OpenAI's ImageNet names and 80 templates; 18 for CIFAR), read as
package data without importing clip_benchmark's modules (they need torch). Metrics, as its
`metrics/zeroshot_classification.py` and `zeroshot_retrieval.py` compute them:

* classification: class embedding = mean of the unit text embeddings of the class's prompts, re-normalised;
  `acc1`, `acc5` (NaN under 5 classes) of image·class scores, and `mean_per_class_recall` (the mean over the classes
  present of the fraction of their images predicted right: sklearn's balanced accuracy);
* retrieval, every caption of every image: `image_retrieval_recall@k` (text → image: is the caption's image among
  its k best images) and `text_retrieval_recall@k` (image → text: is any of the image's captions among its k best
  captions), k = 1, 5, 10.

Images are resized (bicubic) so their shorter side is the model's image size, centre-cropped and scaled to [-1, 1],
and streamed in batches: nothing holds a whole dataset's decoded images (small sets are cached after the first
pass, up to `cache_bytes`).

  python -m vlm_jax.tools.evaluate --workdir RUN --suite imagenet,cifar10,coco --data_dir ~/tensorflow_datasets
  config: evals.suite = "imagenet,cifar10"; evals.suite_data_dir = "..."; evals.suite_max_items = 0  (training)
"""
from __future__ import annotations

import ast
import functools
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlm_jax.evals.metrics import l2_normalize

CLASSIFICATION, RETRIEVAL = "zeroshot_classification", "zeroshot_retrieval"
RECALL_KS = (1, 5, 10)
LANGUAGE = "en"
# evals keys of the in-training suite evaluator (read by every objective through `suite_evaluators`): suite (comma-
# separated names, "" off), suite_data_dir (the TFDS data dir; "" → $TFDS_DATA_DIR or ~/tensorflow_datasets),
# suite_max_items (images per dataset, 0 all).
SUITE_DEFAULTS = dict(suite="", suite_data_dir="", suite_max_items=0)

# torchvision's CIFAR class names (the datasets' own meta files), which clip_benchmark uses as they are
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
    pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
    skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())


@dataclass(frozen=True)
class Benchmark:
    """One dataset of the suite: its clip_benchmark name, the TFDS dataset and split it reads, and its task."""

    dataset: str  # clip_benchmark's name (JSON "dataset", metric prefix)
    tfds_name: str
    split: str
    task: str = CLASSIFICATION
    config: str | None = None  # TFDS builder config
    classes: str = "imagenet1k"  # class names: "imagenet1k" (OpenAI's), "imagenet-r"/"imagenet-a" (their 200 of
    # them), "cifar10"/"cifar100" (torchvision's)
    label_key: str = "label"
    caption_key: str = "captions/text"

    @property
    def key(self) -> str:
        """The feature read beside the image: the label or the captions."""
        return self.label_key if self.task == CLASSIFICATION else self.caption_key


BENCHMARKS: dict[str, Benchmark] = {b.dataset: b for b in (
    Benchmark("imagenet1k", "imagenet2012", "validation"),
    Benchmark("imagenetv2", "imagenet_v2", "test", config="matched-frequency"),
    Benchmark("imagenet_sketch", "imagenet_sketch", "test"),
    Benchmark("imagenet-r", "imagenet_r", "test", classes="imagenet-r"),
    Benchmark("imagenet-a", "imagenet_a", "test", classes="imagenet-a"),
    Benchmark("cifar10", "cifar10", "test", classes="cifar10"),
    Benchmark("cifar100", "cifar100", "test", classes="cifar100"),
    Benchmark("mscoco_captions", "coco_captions", "test", RETRIEVAL, config="2014"),  # Karpathy test: 5000 images
)}
ALIASES = {"imagenet": "imagenet1k", "imagenet2012": "imagenet1k", "imagenet_v2": "imagenetv2",
           "imagenet-v2": "imagenetv2", "imagenet_r": "imagenet-r", "imagenet_a": "imagenet-a",
           "imagenet-sketch": "imagenet_sketch", "coco": "mscoco_captions", "coco_captions": "mscoco_captions"}
UNAVAILABLE = {"flickr30k": "TFDS has no flickr30k builder (tensorflow-datasets 4.9), so there is no prepared TFDS "
                            "dataset to read; evaluate it with clip_benchmark itself"}


def parse_suite(spec: str | Sequence[str | Benchmark]) -> list[Benchmark]:
    """Benchmarks named in `spec` ("imagenet,cifar10,coco" or a list of names or Benchmarks; clip_benchmark or
    TFDS names, in order, duplicates dropped); raises ValueError naming the valid names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n if isinstance(n, Benchmark) else str(n).strip() for n in items]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"empty benchmark suite; valid names: {valid_names()}")
    out: list[Benchmark] = []
    for name in names:
        if isinstance(name, Benchmark):
            out += [] if name in out else [name]
            continue
        key = ALIASES.get(name.lower(), name.lower())
        if key in UNAVAILABLE:
            raise ValueError(f"benchmark {name!r} is not supported: {UNAVAILABLE[key]}. Valid names: {valid_names()}")
        if key not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; valid names: {valid_names()}")
        if BENCHMARKS[key] not in out:
            out.append(BENCHMARKS[key])
    return out


def valid_names() -> str:
    """The names `parse_suite` takes, listed."""
    return ", ".join(sorted(BENCHMARKS)) + f" (aliases: {', '.join(sorted(ALIASES))})"


# ---------------------------------------------------------------------------------------------------------------
# clip_benchmark's data files (package data; its Python modules import torch and are never imported).

def _clip_benchmark_file(name: str) -> str:
    try:
        return (resources.files("clip_benchmark") / "datasets" / name).read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("the benchmark suite reads its class names and templates from the clip-benchmark "
                                  "package: pip install --no-deps clip-benchmark==1.6.2") from exc


@functools.lru_cache(maxsize=None)
def _clip_json(name: str) -> dict:
    return json.loads(_clip_benchmark_file(name))


@functools.lru_cache(maxsize=None)
def _builder_lists() -> dict[str, list[str]]:
    """The wnid lists clip_benchmark's datasets/builder.py defines (all 1000 ImageNet wnids in label order, and the
    200 of ImageNet-R and ImageNet-A), read from its source text as literals."""
    wanted = {"all_imagenet_wordnet_ids", "imagenet_r_wnids", "imagenet_a_wnids"}
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(_clip_benchmark_file("builder.py"))):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in wanted and node.targets[0].id not in out:
            value = ast.literal_eval(node.value)
            out[node.targets[0].id] = sorted(value) if isinstance(value, set) else list(value)
    if set(out) != wanted:
        raise RuntimeError(f"clip_benchmark/datasets/builder.py lacks {sorted(wanted - set(out))}")
    return out


def subset_indices(classes: str) -> np.ndarray | None:
    """ImageNet label indices of a 200-class variant's classes (ascending, clip_benchmark's order); None for the
    datasets that use all their labels."""
    if classes not in ("imagenet-r", "imagenet-a"):
        return None
    lists = _builder_lists()
    keep = set(lists["imagenet_r_wnids" if classes == "imagenet-r" else "imagenet_a_wnids"])
    return np.array([i for i, w in enumerate(lists["all_imagenet_wordnet_ids"]) if w in keep])


def class_names(bench: Benchmark) -> list[str]:
    """The class names clip_benchmark prompts with for `bench`."""
    if bench.classes == "cifar10":
        return list(CIFAR10_CLASSES)
    if bench.classes == "cifar100":
        return list(CIFAR100_CLASSES)
    names = _clip_json("en_classnames.json")
    base = names.get(bench.dataset) or names["imagenet1k"]
    sub = subset_indices(bench.classes)
    return list(base) if sub is None else [base[i] for i in sub]


def templates(bench: Benchmark) -> list[str]:
    """clip_benchmark's prompt templates for `bench` ("{c}" is the class name): its own, else ImageNet's 80."""
    table = _clip_json("en_zeroshot_classification_templates.json")
    return list(table.get(bench.dataset) or table["imagenet1k"])


# ---------------------------------------------------------------------------------------------------------------
# Images.

def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] → uint8 [size, size, 3]: shorter side resized to `size` (bicubic, antialiased), centre crop
    (torchvision's Resize(size) + CenterCrop(size), CLIP's evaluation transform)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    h, w = arr.shape[:2]
    if (h, w) != (size, size):
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        if (nh, nw) != (h, w):
            arr = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((nw, nh), Image.Resampling.BICUBIC))
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        arr = arr[top:top + size, left:left + size]
    return np.ascontiguousarray(arr, np.uint8)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [-1, 1] (the training images' range, `data.ops.normalize`)."""
    from vlm_jax.data.ops import normalize

    return normalize(images)


# ---------------------------------------------------------------------------------------------------------------
# Metrics (float32 scores as clip_benchmark's; exact ties, which real embeddings do not have, are no concern).

def top_classes(logits: np.ndarray, k: int) -> np.ndarray:
    """[N, min(k, C)] class indices by descending score (exact ties: as torch.topk, no promised order)."""
    k = min(k, logits.shape[1])
    part = np.sort(np.argpartition(-logits, k - 1, axis=1)[:, :k], axis=1) if k < logits.shape[1] else \
        np.tile(np.arange(logits.shape[1]), (len(logits), 1))
    order = np.argsort(-np.take_along_axis(logits, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def classification_metrics(top: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """`acc1`, `acc5` (NaN under 5 classes) and `mean_per_class_recall` from each image's top classes [N, ≥1]."""
    top, labels = np.asarray(top), np.asarray(labels)
    pred = top[:, 0]
    acc5 = float(np.mean(np.any(top[:, :5] == labels[:, None], axis=1))) if num_classes >= 5 else float("nan")
    recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
    return {"acc1": float(np.mean(pred == labels)), "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls))}


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                      ks: Sequence[int] = RECALL_KS, chunk: int = 1024) -> dict[str, float]:
    """clip_benchmark's retrieval recalls from unit embeddings; `text_image[t]`: the image caption t describes."""
    image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    owner = np.asarray(text_image, np.int64)
    n_img, n_txt = len(image_emb), len(text_emb)
    t2i = np.empty(n_txt, np.int64)  # rank of each caption's image among all images
    for s in range(0, n_txt, chunk):
        scores = text_emb[s:s + chunk] @ image_emb.T
        pos = scores[np.arange(len(scores)), owner[s:s + chunk]]
        t2i[s:s + chunk] = np.sum(scores > pos[:, None], axis=1)
    i2t = np.full(n_img, np.iinfo(np.int64).max)  # rank of each image's best-ranked caption (none: never found)
    for s in range(0, n_img, chunk):
        scores = image_emb[s:s + chunk] @ text_emb.T
        mine = owner[None, :] == np.arange(s, s + len(scores))[:, None]
        best = np.where(mine, scores, -np.inf).max(axis=1, initial=-np.inf)
        has = mine.any(axis=1)
        i2t[s:s + len(scores)][has] = np.sum(scores[has] > best[has, None], axis=1)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(np.mean(t2i < k)) if n_txt else float("nan")
        out[f"text_retrieval_recall@{k}"] = float(np.mean(i2t < k)) if n_img else float("nan")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The evaluator.

def default_data_dir() -> str:
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS' default)."""
    return os.environ.get("TFDS_DATA_DIR") or str(Path("~/tensorflow_datasets").expanduser())


def clip_benchmark_record(dataset: str, task: str, metrics: dict[str, float], model: str,
                          pretrained: str) -> dict[str, Any]:
    """One result as clip_benchmark's CLI dumps it."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": dict(metrics),
            "language": LANGUAGE}


def clip_benchmark_filename(dataset: str, task: str, model: str, pretrained: str) -> str:
    """clip_benchmark's default output name, "{dataset}_{pretrained}_{model}_{language}_{task}.json"."""
    slug = lambda s: str(s).replace("/", "_")  # noqa: E731
    return f"{slug(dataset)}_{slug(pretrained)}_{slug(model)}_{LANGUAGE}_{task}.json"


class SuiteEvaluator:
    """Zero-shot classification / retrieval over prepared TFDS datasets with a run's `Embedder`. Calling it gives
    flat metrics "{dataset}/{metric}" (clip_benchmark's names) and keeps them in `results` for `write_json`."""

    def __init__(self, embedder: Any, benchmarks: Sequence[Benchmark] | str, data_dir: str | Path | None,
                 image_size: int, max_items: int = 0, workers: int | None = None, keep_embeddings: bool = False,
                 cache_bytes: int = 512 << 20):
        from vlm_jax.data.tfds_reader import open_split

        self.embedder, self.image_size, self.max_items = embedder, int(image_size), int(max_items or 0)
        self.benchmarks = parse_suite(benchmarks)
        self.data_dir = str(data_dir or default_data_dir())
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.keep_embeddings, self.cache_bytes = keep_embeddings, cache_bytes
        # opened now (metadata only), so a missing dataset fails when the evaluator is built, naming where it looked
        self.readers = {b.dataset: open_split(self.data_dir, b.tfds_name, b.split, b.config)
                        for b in self.benchmarks}
        self._cache: dict[str, list[tuple[np.ndarray, list]]] = {}
        self.results: dict[str, dict[str, Any]] = {}  # dataset → {"task", "metrics"} of the last call
        self.embeddings: dict[str, dict[str, np.ndarray]] = {}  # with keep_embeddings: what the metrics came from

    def _batches(self, bench: Benchmark) -> Iterator[tuple[np.ndarray, list]]:
        """(uint8 prepared images [b, S, S, 3], their labels or caption lists), `embedder.batch_size` at a time."""
        if bench.dataset in self._cache:
            yield from self._cache[bench.dataset]
            return
        reader, size, key = self.readers[bench.dataset], self.image_size, bench.key
        step = int(getattr(self.embedder, "batch_size", 256) or 256)
        kept: list | None = []
        kept_bytes = 0
        images: list[np.ndarray] = []
        values: list = []

        def prep(ex: dict) -> tuple[np.ndarray, Any]:
            return prepare_image(ex["image"], size), ex[key]

        def flush() -> tuple[np.ndarray, list]:
            return np.stack(images), list(values)

        for image, value in reader.examples(["image", key], self.max_items, prep, self.workers):
            images.append(image)
            values.append(value)
            if len(images) == step:
                batch = flush()
                images, values = [], []
                kept, kept_bytes = self._keep(kept, kept_bytes, batch)
                yield batch
        if images:
            batch = flush()
            kept, kept_bytes = self._keep(kept, kept_bytes, batch)
            yield batch
        if kept is not None:
            self._cache[bench.dataset] = kept

    def _keep(self, kept: list | None, used: int, batch: tuple[np.ndarray, list]) -> tuple[list | None, int]:
        """Adds a batch to the cache being built, or gives the cache up (None) once past `cache_bytes`."""
        if kept is None:
            return None, used
        used += batch[0].nbytes
        if used > self.cache_bytes:
            return None, used
        kept.append(batch)
        return kept, used

    def class_embeddings(self, params: Any, names: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        """[C, D]: per class, the mean of its prompts' unit text embeddings, re-normalised."""
        total = None  # summed template by template: ImageNet's 80 × 1000 embeddings are never held at once
        for t in prompts:
            emb = np.asarray(self.embedder.texts(params, [t.format(c=n) for n in names]), np.float32)
            total = emb if total is None else total + emb
        return l2_normalize(total / len(prompts))

    def classify(self, params: Any, bench: Benchmark) -> dict[str, float]:
        """clip_benchmark's zero-shot classification metrics of `bench`."""
        names = class_names(bench)
        cls = self.class_embeddings(params, names, templates(bench))
        sub = subset_indices(bench.classes)
        remap = None
        if sub is not None:  # TFDS labels are ImageNet indices: to positions in the 200-class subset
            remap = np.full(1000, -1, np.int64)
            remap[sub] = np.arange(len(sub))
        tops, labels, embs = [], [], []
        for images, labs in self._batches(bench):
            emb = self.embedder.images(params, to_model_range(images))
            tops.append(top_classes(emb @ cls.T, 5))
            labs = np.asarray(labs, np.int64)
            if remap is not None:
                labs = remap[labs]
                if np.any(labs < 0):
                    raise ValueError(f"{bench.dataset}: a label outside its {len(sub)} classes")
            labels.append(labs)
            if self.keep_embeddings:
                embs.append(emb)
        if not labels:
            raise ValueError(f"{bench.dataset}: no images in {self.readers[bench.dataset].split!r}")
        labels_all = np.concatenate(labels)
        if self.keep_embeddings:
            self.embeddings[bench.dataset] = {"images": np.concatenate(embs), "labels": labels_all, "classes": cls}
        return classification_metrics(np.concatenate(tops), labels_all, len(names))

    def retrieve(self, params: Any, bench: Benchmark) -> dict[str, float]:
        """clip_benchmark's retrieval recalls of `bench` over every caption of every image."""
        embs, texts, owners, seen = [], [], [], 0
        for images, captions in self._batches(bench):
            embs.append(self.embedder.images(params, to_model_range(images)))
            for caps in captions:
                caps = [caps] if isinstance(caps, str) else list(caps)
                texts.extend(caps)
                owners.extend([seen] * len(caps))
                seen += 1
        if not embs:
            raise ValueError(f"{bench.dataset}: no images in {self.readers[bench.dataset].split!r}")
        img = np.concatenate(embs)
        txt = self.embedder.texts(params, texts) if texts else np.zeros((0, img.shape[1]), np.float32)
        if self.keep_embeddings:
            self.embeddings[bench.dataset] = {"images": img, "texts": txt, "text_image": np.asarray(owners)}
        return retrieval_metrics(img, txt, np.asarray(owners, np.int64))

    def __call__(self, params: Any, extra: Any = None) -> dict[str, float]:
        out: dict[str, float] = {}
        self.results = {}
        for bench in self.benchmarks:
            metrics = self.classify(params, bench) if bench.task == CLASSIFICATION else self.retrieve(params, bench)
            self.results[bench.dataset] = {"task": bench.task, "metrics": metrics}
            out.update({f"{bench.dataset}/{k}": v for k, v in metrics.items()})
        return out

    def write_json(self, out_dir: str | Path, model: str, pretrained: str) -> list[Path]:
        """The last call's results, one clip_benchmark JSON file per dataset in `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for dataset, res in self.results.items():
            path = out_dir / clip_benchmark_filename(dataset, res["task"], model, pretrained)
            path.write_text(json.dumps(clip_benchmark_record(dataset, res["task"], res["metrics"], model, pretrained)))
            paths.append(path)
        return paths


def suite_evaluator(objective: Any, suite: str | Sequence[str], data_dir: str | Path | None = None,
                    max_items: int = 0, **kwargs: Any) -> SuiteEvaluator:
    """A SuiteEvaluator on an objective's image/text embedder (contrastive objectives, CoCa) at its image size."""
    benchmarks = parse_suite(suite)
    embedder = getattr(objective, "embedder", None)
    if embedder is None or getattr(embedder, "tokenize", None) is None:
        raise ValueError(f"the zero-shot benchmark suite needs image and text embeddings; objective "
                         f"{type(objective).__name__} has none (contrastive objectives and CoCa do)")
    return SuiteEvaluator(embedder, benchmarks, data_dir, objective.data.image_size, max_items, **kwargs)


def suite_evaluators(objective: Any) -> dict[str, SuiteEvaluator]:
    """{"suite": the evaluator} when the objective's `evals.suite` names benchmarks, else {} (every objective's
    `evaluators()` adds these; its metrics are "suite/{dataset}/{metric}")."""
    from vlm_jax.config_audit import merged

    evals = objective.config.get("evals")
    if evals is None:
        return {}
    ev = merged(SUITE_DEFAULTS, evals)
    suite = ev["suite"]
    if not suite:
        return {}
    return {"suite": suite_evaluator(objective, suite, ev["suite_data_dir"] or None, int(ev["suite_max_items"]))}


def format_suite(results: dict[str, dict[str, Any]], title: str = "") -> str:
    """Markdown table of a SuiteEvaluator's `results` (percent)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| dataset | task | metric | % |", "|---|---|---|---:|"]
    for dataset, res in results.items():
        for metric, value in res["metrics"].items():
            shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
            lines.append(f"| {dataset} | {res['task']} | {metric} | {shown} |")
    return "\n".join(lines)
