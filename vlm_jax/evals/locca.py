"""SigLIP 2's LocCa decoder on held-out images (Wan et al. 2024's tasks): captioning (CAP, the image itself) and
grounded captioning (GCAP, a composed scene and the box of the object to describe) scored by CIDEr-D beside the
pixel-nearest-neighbour caption, and referring expressions (REF, a composed scene and a caption → the object's box)
scored by the share of predicted boxes with IoU ≥ 0.5 beside two fixed boxes (the centred box of the object's size
and the mean target box). Scenes are composed once from the eval set's images with a fixed seed, as in training
(`data.scenes.compose_scenes`), and the REF query is the image's first reference caption."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.data.scenes import compose_scenes
from vlm_jax.evals.captioning import cider_d
from vlm_jax.evals.generation import pixel_nn_captions
from vlm_jax.evals.zeroshot import EvalSet
from vlm_jax.losses.locca import BOX_TOKENS, bins_to_boxes, box_bins, task_sequences

# (params, images [N, S, S, 3], prompts int [N, L], prompt lengths [N], allowed bool [N, V]) → tokens int [N, L]:
# the prompt, then greedy continuations drawn from the allowed ids
DecodeFn = Callable[[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
IOU_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class LoccaVocab:
    """The decoder's ids: text tokens below `text_vocab`, the three task tokens, then `bins` box-coordinate bins."""
    task_ids: tuple[int, int, int]  # CAP, REF, GCAP
    bin_offset: int
    bins: int
    text_vocab: int  # caption tokens (the tokenizer's pieces; not BOS / MASK, task or box tokens)
    eos: int
    pad: int

    def allowed(self, boxes: bool) -> np.ndarray:
        """bool [V]: the box bins, or the caption tokens (EOS included, padding not)."""
        ids = np.arange(self.bin_offset + self.bins)
        if boxes:
            return ids >= self.bin_offset
        return (ids < self.text_vocab) & (ids != self.pad)


def greedy_decode(logits_fn: Callable[[jax.Array], jax.Array], prompt: jax.Array, prompt_len: jax.Array,
                  allowed: jax.Array, eos: int, pad: int) -> jax.Array:
    """Greedy continuation of `prompt` [B, L] (its first `prompt_len` [B] tokens given, the rest padding) by the
    allowed ids [B, V]; after EOS, padding. `logits_fn(seq)` [B, L−1, V] is the teacher-forced decoder on the whole
    sequence: position t is read at step t, so a causal decoder never sees the still-empty positions. Each step
    reruns it on the growing sequence (O(L²) and no KV cache: simple, and enough for this small eval)."""
    length = prompt.shape[1]
    pos = jnp.arange(length)[None, :]

    def step(t: jax.Array, seq: jax.Array) -> jax.Array:
        logits = jax.lax.dynamic_index_in_dim(logits_fn(seq), t, axis=1, keepdims=False)
        nxt = jnp.argmax(jnp.where(allowed, logits, -jnp.inf), axis=-1).astype(seq.dtype)
        ended = jnp.any((seq == eos) & (pos >= prompt_len[:, None]) & (pos <= t), axis=1)
        nxt = jnp.where(ended, pad, nxt)
        current = jax.lax.dynamic_index_in_dim(seq, t + 1, axis=1, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(seq, jnp.where(t + 1 >= prompt_len, nxt, current), t + 1, axis=1)

    return jax.lax.fori_loop(0, length - 1, step, prompt)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N] of boxes [N, 4] as (top, left, bottom, right); 0 where the union is empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    w = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    inter = h * w
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclasses.dataclass
class TaskInputs:
    """One eval set's decoder inputs: the images and the composed scenes with their targets and prompts."""
    images: np.ndarray
    scenes: np.ndarray
    boxes: np.ndarray  # [N, 4] the true box of each scene's own image
    prompts: dict[str, tuple[np.ndarray, np.ndarray]]  # task → (prompts [N, L], prompt lengths [N])


def task_inputs(ev: EvalSet, vocab: LoccaVocab, tokenize: Callable[[list[str]], np.ndarray], scale: float,
                seed: int) -> TaskInputs:
    """Scenes of the set's images (partners from the set) and each task's prompt: CAP's task token; REF's task
    token and the first reference caption; GCAP's task token and the box bins."""
    images = np.asarray(ev.images, np.float32)
    scenes, boxes, _ = compose_scenes(jax.random.key(seed), jnp.asarray(images), scale)
    captions = jnp.asarray(tokenize([refs[0] for refs in ev.references]))
    bins = box_bins(boxes, vocab.bins) + vocab.bin_offset
    prompts = {}
    for k, task in enumerate(("cap", "ref", "gcap")):
        seq, pred = task_sequences(captions, bins, jnp.full((len(images),), k), vocab.eos, vocab.pad, vocab.task_ids)
        seq, pred = np.asarray(seq), np.asarray(pred)
        start = np.argmax(pred, axis=1).astype(np.int32)  # the first predicted position
        given = np.arange(seq.shape[1])[None, :] < start[:, None]
        prompts[task] = (np.where(given, seq, vocab.pad).astype(np.int32), start)
    return TaskInputs(images, np.asarray(scenes), np.asarray(boxes, np.float64), prompts)


def subsample(ev: EvalSet, n: int) -> EvalSet:
    """The set's first query images up to `n` evenly spaced ones (0: all), with their references."""
    if not n or n >= len(ev.images):
        return ev
    idx = np.linspace(0, len(ev.images) - 1, n).round().astype(int)
    pick = lambda x: None if x is None else np.asarray(x)[idx]  # noqa: E731
    return dataclasses.replace(ev, images=pick(ev.images), labels=pick(ev.labels), pixel_images=pick(ev.pixel_images),
                               references=[ev.references[i] for i in idx],
                               subsets={k: np.asarray(v)[idx] for k, v in ev.subsets.items()})


class LoccaEvaluator:
    """CAP / GCAP CIDEr-D (model and pixel NN) and REF accuracy at IoU ≥ 0.5 (model, centred box, mean box)."""

    def __init__(self, decode: DecodeFn, sets: dict[str, EvalSet], vocab: LoccaVocab,
                 tokenize: Callable[[list[str]], np.ndarray], detokenize: Callable[[np.ndarray], list[str]],
                 scale: float, seed: int = 0):
        self.decode, self.vocab, self.detokenize, self.scale = decode, vocab, detokenize, scale
        self.sets = {k: v for k, v in sets.items() if v.references}
        self.inputs = {k: task_inputs(v, vocab, tokenize, scale, seed + i)
                       for i, (k, v) in enumerate(self.sets.items())}
        self._pixel = {k: pixel_nn_captions(v) for k, v in self.sets.items()}

    def _run(self, params: Any, images: np.ndarray, task: str, inputs: TaskInputs) -> np.ndarray:
        """Decoded sequences [N, L] of one task."""
        prompts, lengths = inputs.prompts[task]
        allowed = np.repeat(self.vocab.allowed(task == "ref")[None, :], len(images), axis=0)
        return np.asarray(self.decode(params, images, prompts, lengths, allowed))

    def _captions(self, tokens: np.ndarray, start: np.ndarray) -> list[str]:
        """Generated captions: each row's tokens from its first generated position."""
        rows = [np.concatenate([row[s:], np.full(s, self.vocab.pad, row.dtype)]) for row, s in zip(tokens, start)]
        return self.detokenize(np.stack(rows)) if rows else []

    def boxes(self, tokens: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Predicted boxes [N, 4] from REF sequences: the BOX_TOKENS bins after each prompt."""
        bins = np.take_along_axis(tokens, start[:, None] + np.arange(BOX_TOKENS)[None, :], axis=1)
        return np.asarray(bins_to_boxes(jnp.asarray(bins - self.vocab.bin_offset), self.vocab.bins), np.float64)

    def __call__(self, params: Any, extra: Any = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, ev in self.sets.items():
            inp = self.inputs[name]
            refs = {i: list(r) for i, r in enumerate(ev.references)}
            cider = lambda caps: cider_d(dict(enumerate(caps)), refs)  # noqa: E731
            for task, images in (("cap", inp.images), ("gcap", inp.scenes)):
                captions = self._captions(self._run(params, images, task, inp), inp.prompts[task][1])
                out[f"{name}/{task}/CIDEr-D/model"] = cider(captions)
                if self._pixel[name] is not None:  # the pixel NN of the object's own image, for both tasks
                    out[f"{name}/{task}/CIDEr-D/pixel"] = cider(self._pixel[name])
            predicted = self.boxes(self._run(params, inp.scenes, "ref", inp), inp.prompts["ref"][1])
            side = 0.5 * (inp.boxes[:, 2] - inp.boxes[:, 0])
            centred = np.stack([0.5 - side, 0.5 - side, 0.5 + side, 0.5 + side], axis=1)
            mean_box = np.broadcast_to(inp.boxes.mean(axis=0), inp.boxes.shape)
            for who, boxes in (("model", predicted), ("centre", centred), ("mean_box", mean_box)):
                iou = box_iou(boxes, inp.boxes)
                out[f"{name}/ref/acc@{IOU_THRESHOLD}/{who}"] = float(np.mean(iou >= IOU_THRESHOLD))
                out[f"{name}/ref/mean_iou/{who}"] = float(np.mean(iou))
            out[f"{name}/num_images"] = float(len(inp.images))
        return out
