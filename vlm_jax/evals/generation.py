"""Evaluation of image-to-text models: generated captions (CIDEr-D, BLEU, ROUGE-L), perplexity, and the scoring
classifier (zero-shot classification by the highest caption log-likelihood over class prompts, as in CapPa).

`CaptionFns` holds the jitted model functions (generate, score image–text pairs, score every class prompt for a
batch of images), each optionally conditioned on a task prompt per image; inputs are fixed-shape batches (the
last one padded by repeating its final row) placed as replicated global arrays, so the same code runs on one
device, a mesh, or several hosts. The model's `encode(image, prompt)` returns a context pytree that `logits` and
the decoding seam (`models.decoder.TextGenerator`: init_cache / prefill / decode_step) take as it is.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, ContextManager, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import sharding as shd
from vlm_jax.evals.captioning import caption_scores, cider_d_scores
from vlm_jax.evals.embedder import mesh_of
from vlm_jax.evals.metrics import chance_topk, pixel_features, topk_hits
from vlm_jax.evals.zeroshot import KS, EvalSet, class_pixel_features, mean_hits, similarity_scores
from vlm_jax.losses.generative import sequence_log_likelihood, shift_right
from vlm_jax.models import decoding
from vlm_jax.models.decoder import start_decoding, step_fn

CAPTION_METRICS = ("CIDEr-D", "BLEU-1", "BLEU-4", "ROUGE-L")


def _pad_rows(x: Any, n: int) -> Any:
    """x (an array, or a NaFlex dict of arrays) with its last row repeated up to n rows."""
    return jax.tree.map(lambda v: v if len(v) == n else np.concatenate([v, np.repeat(v[-1:], n - len(v), axis=0)]), x)


def count_rows(images: Any) -> int:
    """How many images: rows of an array [N, H, W, 3] or of a NaFlex batch (a dict of arrays with leading N)."""
    return len(jax.tree.leaves(images)[0])


def take_rows(images: Any, rows: Any) -> Any:
    """Rows (a slice or indices) of images: float32 pixels, or a NaFlex batch with float patches as float32."""
    def take(v: Any) -> np.ndarray:
        v = np.asarray(v)[rows]
        return v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
    return jax.tree.map(take, images)


DECODE_OPTIONS = ("max_len", "beam_size", "length_penalty", "sampling")


class CaptionFns:
    """Jitted generation and scoring for a `TextGenerator` (methods encode / logits and the decoding seam).

    tokenize_prompt: prompt strings → int32 [N, P] for a prompted model (None: the model takes no prompt).
    Decoding settings (DECODE_OPTIONS; `sampling`: {temperature, top_k, top_p, seed} samples instead of searching)
    are part of each compiled function's key; `with_options` gives a copy with others, sharing compiled functions.
    """

    def __init__(self, model: Any, ids: dict[str, int], tokenize: Callable[[list[str]], np.ndarray],
                 detokenize: Callable[[np.ndarray], list[str]], *, max_len: int, batch_size: int = 64,
                 class_chunk: int = 64, beam_size: int = 1, length_penalty: float = 0.6,
                 context: Callable[[], ContextManager] = contextlib.nullcontext,
                 tokenize_prompt: Callable[[list[str]], np.ndarray] | None = None,
                 sampling: dict[str, Any] | None = None):
        self.model, self.ids, self.tokenize, self.detokenize = model, dict(ids), tokenize, detokenize
        self.tokenize_prompt = tokenize_prompt
        self.max_len, self.batch_size, self.class_chunk = max_len, batch_size, class_chunk
        self.beam_size, self.length_penalty, self._context = beam_size, length_penalty, context
        self.sampling = sampling
        prompt_len = 0 if tokenize_prompt is None else int(np.shape(tokenize_prompt([""]))[1])
        self.decode_limit = int(model.decode_capacity(prompt_len))  # tokens the decoder's positions hold
        self._check()
        self._jitted: dict[tuple, Callable] = {}

    def _check(self) -> None:
        """Decoding settings the decoder can run (its cache would otherwise overwrite its last slot)."""
        if not 1 <= self.max_len <= self.decode_limit:
            raise ValueError(f"evals.decode.max_len={self.max_len}: generation feeds up to max_len tokens (BOS "
                             f"included) and this decoder holds {self.decode_limit} (its max_len, the data's text "
                             f"length, less any prompt); use 1 … {self.decode_limit} (0: the data's text length)")
        if self.beam_size < 1:
            raise ValueError(f"evals.decode.beam_size must be >= 1, got {self.beam_size}")

    def options(self) -> dict[str, Any]:
        """The decoding settings (DECODE_OPTIONS)."""
        return {k: getattr(self, k) for k in DECODE_OPTIONS}

    def with_options(self, **changes: Any) -> "CaptionFns":
        """A copy with other decoding settings that shares the compiled functions (`self` is unchanged)."""
        unknown = sorted(set(changes) - set(DECODE_OPTIONS))
        if unknown:
            raise ValueError(f"unknown decoding options {unknown}; valid: {list(DECODE_OPTIONS)}")
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, dict(v) if k == "sampling" and v is not None else v)
        new._check()
        return new

    # ------------------------------------------------------------------ traced functions
    def _generate(self, params: Any, images: jax.Array, prompts: jax.Array | None = None) -> jax.Array:
        """Greedy (beam_size 1), beam-search or (with `sampling`) sampled tokens [B, max_len] (EOS, then pad).

        The context's cross-attention keys/values are computed once per image at prefill; beam rows b·k + j read
        image b's without copies."""
        m, ids = self.model, self.ids
        context, _ = m.apply({"params": params}, images, prompts, method="encode")
        b, k = jax.tree.leaves(images)[0].shape[0], self.beam_size
        cache, context_cache = start_decoding(m, params, context, b)
        step = step_fn(m, params, context_cache)
        bos = jnp.full((b,), ids["bos"], jnp.int32)
        kw = dict(max_len=self.max_len, eos_id=ids["eos"], pad_id=ids["pad"])
        if self.sampling is not None:
            opts = dict(self.sampling)
            key = jax.random.key(int(opts.pop("seed", 0)))
            return decoding.sample(step, cache, bos, key, **kw, **opts)
        if k == 1:
            return decoding.greedy(step, cache, bos, **kw)
        seqs, _ = decoding.beam_search(step, cache, bos, beam_size=k, length_penalty=self.length_penalty, **kw)
        return seqs[:, 0]

    def _encode(self, params: Any, images: jax.Array, prompts: jax.Array | None = None) -> Any:
        """The model's context for images (and prompts): what scoring reads, computed once per image."""
        return self.model.apply({"params": params}, images, prompts, method="encode")[0]

    def _pair_scores(self, params: Any, images: jax.Array, tokens: jax.Array,
                     prompts: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Σ log p(caption | image, prompt) [B] and target token counts [B] of aligned pairs."""
        context = self._encode(params, images, prompts)
        logits = self.model.apply({"params": params}, shift_right(tokens, self.ids["bos"]), context, method="logits")
        mask = tokens != self.ids["pad"]
        return sequence_log_likelihood(logits, tokens, mask), jnp.sum(mask, axis=-1)

    def _class_scores(self, params: Any, context: Any, tokens: jax.Array) -> jax.Array:
        """Σ log p(text c | image i, prompt i) [B, C] for every encoded image × every class text."""
        b, c = jax.tree.leaves(context)[0].shape[0], tokens.shape[0]
        rows = _repeat(context, c)  # row i*c + j: image i, text j
        tok = jnp.tile(tokens, (b, 1))
        logits = self.model.apply({"params": params}, shift_right(tok, self.ids["bos"]), rows, method="logits")
        return sequence_log_likelihood(logits, tok, tok != self.ids["pad"]).reshape(b, c)

    # ------------------------------------------------------------------ host side
    def _fn(self, name: str, mesh: Any) -> Callable:
        """The jitted `_name`, compiled once per mesh and decoding settings (a frozen copy of them is traced)."""
        opts = self.options()
        key = (name, mesh, *[tuple(sorted(v.items())) if isinstance(v, dict) else v for v in opts.values()])
        if key not in self._jitted:
            fn = getattr(self.with_options(**opts), f"_{name}")

            def traced(*args: Any, fn: Callable = fn) -> Any:
                with self._context():
                    return fn(*args)

            self._jitted[key] = jax.jit(traced, out_shardings=shd.replicated(mesh) if mesh is not None else None)
        return self._jitted[key]

    @staticmethod
    def _put(x: Any, mesh: Any) -> Any:
        """Host arrays as replicated global arrays (every process holds the same eval inputs)."""
        if mesh is None:
            return x
        return jax.tree.map(lambda v: jax.make_array_from_callback(v.shape, shd.replicated(mesh),
                                                                   lambda idx: v[idx]), x)

    def prompt_tokens(self, prompts: str | Sequence[str] | None, n: int) -> np.ndarray | None:
        """int32 [n, P] tokens of one prompt per image (a single string is used for all n); None without."""
        if prompts is None:
            return None
        if self.tokenize_prompt is None:
            raise ValueError("this model takes no prompt")
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} images")
        return self.tokenize_prompt(prompts)

    def _rows(self, x: np.ndarray | None, start: int, n: int, size: int, mesh: Any) -> Any:
        """Rows start … start+n of x padded to `size` rows, as a global array (None stays None)."""
        return None if x is None else self._put(_pad_rows(x[start:start + n], size), mesh)

    def generate_tokens(self, params: Any, images: np.ndarray,
                        prompts: str | Sequence[str] | None = None) -> np.ndarray:
        """int32 [N, max_len] generated tokens for float images [N, H, W, 3] in [-1, 1] (and their prompts)."""
        mesh, out = mesh_of(params), []
        fn = self._fn("generate", mesh)
        ptok = self.prompt_tokens(prompts, count_rows(images))
        for start in range(0, count_rows(images), self.batch_size):
            chunk = take_rows(images, slice(start, start + self.batch_size))
            n = count_rows(chunk)
            res = fn(params, self._put(_pad_rows(chunk, self.batch_size), mesh),
                     self._rows(ptok, start, n, self.batch_size, mesh))
            out.append(np.asarray(jax.device_get(res))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.max_len), np.int32)

    def generate(self, params: Any, images: np.ndarray, prompts: str | Sequence[str] | None = None) -> list[str]:
        """Captions (answers to the prompts) of images."""
        return self.detokenize(self.generate_tokens(params, images, prompts)) if count_rows(images) else []

    def pair_scores(self, params: Any, images: np.ndarray, texts: Sequence[str],
                    prompts: str | Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Σ log p(text_i | image_i, prompt_i), target token count) per pair, float64 [N] and int [N]."""
        mesh = mesh_of(params)
        fn = self._fn("pair_scores", mesh)
        tokens = self.tokenize(list(texts))
        ptok = self.prompt_tokens(prompts, len(texts))
        lls, counts = [], []
        for start in range(0, len(texts), self.batch_size):
            n = min(self.batch_size, len(texts) - start)
            img = _pad_rows(take_rows(images, slice(start, start + n)), self.batch_size)
            tok = _pad_rows(tokens[start:start + n], self.batch_size)
            ll, cnt = jax.device_get(fn(params, self._put(img, mesh), self._put(tok, mesh),
                                        self._rows(ptok, start, n, self.batch_size, mesh)))
            lls.append(np.asarray(ll, np.float64)[:n])
            counts.append(np.asarray(cnt)[:n])
        return np.concatenate(lls), np.concatenate(counts)

    def class_scores(self, params: Any, images: np.ndarray, texts: Sequence[str],
                     prompts: str | Sequence[str] | None = None) -> np.ndarray:
        """float64 [N, C]: Σ log p(text_c | image_n, prompt_n) over every class text."""
        mesh = mesh_of(params)
        encode, fn = self._fn("encode", mesh), self._fn("class_scores", mesh)
        tokens = self.tokenize(list(texts))
        total = count_rows(images)
        ptok = self.prompt_tokens(prompts, total)
        bi = max(1, self.batch_size // 8)  # images per call: each is paired with a chunk of class texts
        out = np.zeros((total, len(texts)), np.float64)
        for i in range(0, total, bi):
            n = min(bi, total - i)
            img = self._put(_pad_rows(take_rows(images, slice(i, i + n)), bi), mesh)
            context = encode(params, img, self._rows(ptok, i, n, bi, mesh))  # once for every chunk of texts
            for c in range(0, len(texts), self.class_chunk):
                m = min(self.class_chunk, len(texts) - c)
                tok = self._put(_pad_rows(tokens[c:c + m], self.class_chunk), mesh)
                out[i:i + n, c:c + m] = np.asarray(jax.device_get(fn(params, context, tok)), np.float64)[:n, :m]
        return out


def _repeat(tree: Any, k: int) -> Any:
    """Every leaf's rows repeated k times in place (row i → rows i*k … i*k+k−1)."""
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), tree)


def pixel_nn_captions(ev: EvalSet) -> list[str] | None:
    """The pixel-NN captioning baseline: each query gets the caption of its most correlated pool image."""
    if ev.caption_pool_pixels is None or not ev.caption_pool_texts:
        return None
    query = pixel_features(ev.images if ev.pixel_images is None else ev.pixel_images)
    nearest = np.argmax(query @ pixel_features(ev.caption_pool_pixels).T, axis=1)
    return [ev.caption_pool_texts[i] for i in nearest]


def scoring_queries(n: int, num_classes: int, max_pairs: int) -> np.ndarray:
    """Evenly spaced query indices such that queries × classes ≤ max_pairs (0: all queries): a fixed subset
    where scoring every class prompt for every image is costly."""
    limit = max(1, max_pairs // max(num_classes, 1)) if max_pairs else n
    if limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


class CaptionEvaluator:
    """Generated captions of each set's images against all their references (beside the pixel-NN captions) and
    the perplexity of the references."""

    def __init__(self, fns: CaptionFns, sets: dict[str, EvalSet], examples: int = 3, verbose: bool = True):
        self.fns, self.examples, self.verbose = fns, examples, verbose
        self.sets = {k: v for k, v in sets.items() if v.references}
        self._pixel = {k: pixel_nn_captions(v) for k, v in self.sets.items()}
        self.last_captions: dict[str, list[str]] = {}

    def __call__(self, params: Any, extra: Any = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, ev in self.sets.items():
            captions = self.fns.generate(params, ev.images)
            self.last_captions[name] = captions
            refs = {i: list(r) for i, r in enumerate(ev.references)}
            subsets = {"all": np.ones(len(captions), bool), **ev.subsets}
            for who, cands in (("model", captions), ("pixel", self._pixel[name])):
                if cands is None:
                    continue
                for sub, mask in subsets.items():
                    idx = np.flatnonzero(mask)
                    if len(idx):
                        scores = caption_scores({i: cands[i] for i in idx}, {i: refs[i] for i in idx})
                        out.update({f"{name}/{sub}/{k}/{who}": scores[k] for k in CAPTION_METRICS})
            pairs = [(i, r) for i, rs in refs.items() for r in rs]
            ll, count = self.fns.pair_scores(params, take_rows(ev.images, [i for i, _ in pairs]), [r for _, r in pairs])
            out[f"{name}/nll_per_token"] = float(-ll.sum() / max(count.sum(), 1))
            out[f"{name}/perplexity"] = float(np.exp(out[f"{name}/nll_per_token"]))
            if self.verbose and jax.process_index() == 0:
                print(format_examples(name, captions, ev.references, self.examples), flush=True)
        return out


def format_examples(name: str, captions: list[str], references: list[list[str]], n: int = 3) -> str:
    """The n best and n worst generated captions by per-image CIDEr-D, with a reference each."""
    per = cider_d_scores(dict(enumerate(captions)), dict(enumerate(references)))
    order = np.argsort(-np.asarray([per[i] for i in range(len(captions))]), kind="stable")
    pick = [("best", i) for i in order[:n]] + [("worst", i) for i in order[::-1][:n]]
    lines = [f"{name}: generated captions (per-image CIDEr-D)"]
    lines += [f"  {tag:5s} {per[i]:6.2f}  {captions[i]!r}  (reference: {references[i][0]!r})" for tag, i in pick]
    return "\n".join(lines)


class ScoringClassifier:
    """Zero-shot classification by the highest Σ log p(prompt | image) over class prompts (averaged over
    templates), with top-k beside the pixel NN and chance on the same queries."""

    def __init__(self, fns: CaptionFns, sets: dict[str, EvalSet], templates: Sequence[str], max_pairs: int = 0):
        self.fns, self.templates = fns, list(templates)
        self.sets = {k: v for k, v in sets.items() if len(v.class_names)}
        self.queries = {k: scoring_queries(len(v.labels), len(v.class_names), max_pairs) for k, v in self.sets.items()}

    def scores(self, params: Any, ev: EvalSet, idx: np.ndarray) -> np.ndarray:
        """[Q, C] prompt log-likelihoods of the chosen queries, averaged over templates."""
        per = [self.fns.class_scores(params, take_rows(ev.images, idx), [t.format(c) for c in ev.class_names])
               for t in self.templates]
        return np.mean(per, axis=0)

    def __call__(self, params: Any, extra: Any = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, ev in self.sets.items():
            idx = self.queries[name]
            labels = np.asarray(ev.labels)[idx]
            subsets = {"all": np.ones(len(idx), bool), **{k: np.asarray(v)[idx] for k, v in ev.subsets.items()}}
            res = {f"{k}/model": v for k, v in mean_hits(topk_hits(self.scores(params, ev, idx), labels, KS),
                                                          subsets, "top").items()}
            classes = class_pixel_features(ev)
            if classes is not None:
                px = pixel_features((ev.images if ev.pixel_images is None else ev.pixel_images)[idx])
                res.update({f"{k}/pixel": v for k, v in
                            mean_hits(topk_hits(similarity_scores(px, classes), labels, KS), subsets, "top").items()})
            for sub in subsets:
                for k in KS:
                    res[f"{sub}/top@{k}/chance"] = chance_topk(len(ev.class_names), k)
            res["num_queries"] = float(len(idx))
            out.update({f"{name}/{k}": v for k, v in res.items()})
        return out
