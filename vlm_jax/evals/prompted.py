"""Held-out evaluation of prompted multi-task models (PaLI-style): per task, answers generated from the task's
prompt are scored by exact match (names, groups, translations) or caption metrics (CIDEr-D, BLEU, ROUGE-L), beside
the task's baselines; tasks with a closed answer set also get the scoring classifier (the most likely answer)."""
from __future__ import annotations

import collections
from typing import Any, Sequence

import jax
import numpy as np

from vlm_jax.evals.captioning import caption_scores
from vlm_jax.evals.generation import CAPTION_METRICS, CaptionFns, scoring_queries, take_rows
from vlm_jax.evals.metrics import chance_topk, topk_hits
from vlm_jax.evals.zeroshot import KS


def normalised(text: str) -> str:
    """Case-folded, whitespace-normalised text (the tokenizer case-folds, so answers are compared folded)."""
    return " ".join(text.casefold().split())


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]], sep: str | None = None) -> float:
    """Fraction of predictions equal (after `normalised`) to one of their references; with `sep`, only the parts
    before the first `sep` are compared (e.g. the group of "group / subgroup")."""
    cut = (lambda s: s.split(sep)[0]) if sep else (lambda s: s)
    hits = [any(normalised(cut(p)) == normalised(cut(r)) for r in refs) for p, refs in zip(predictions, references)]
    return float(np.mean(hits)) if hits else float("nan")


def evenly_spaced(n: int, limit: int) -> np.ndarray:
    """At most `limit` evenly spaced indices of n items (0: all)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


class PromptEvaluator:
    """Every task of `tasks` (name → `data.multitask.PromptTask`): generated answers against the references and
    the baselines; the scoring classifier where the task has classes."""

    def __init__(self, fns: CaptionFns, tasks: dict[str, Any], *, scoring: bool = True, scoring_pairs: int = 0,
                 max_items: int = 0, examples: int = 3, verbose: bool = True):
        self.fns, self.tasks, self.scoring, self.scoring_pairs = fns, tasks, scoring, scoring_pairs
        self.items = {k: evenly_spaced(len(t.prompts), max_items) for k, t in tasks.items()}
        self.examples, self.verbose = examples, verbose
        self.last_answers: dict[str, list[str]] = {}

    def _scores(self, task: Any, who: str, answers: list[str], refs: list[list[str]]) -> dict[str, float]:
        """{metric/who: value} of answers against references (exact match, or caption metrics)."""
        if task.metric == "exact":
            out = {f"exact/{who}": exact_match(answers, refs)}
            if task.prefix_sep:
                out[f"exact_prefix/{who}"] = exact_match(answers, refs, task.prefix_sep)
            return out
        scores = caption_scores(dict(enumerate(answers)), dict(enumerate(refs)))
        return {f"{k}/{who}": scores[k] for k in CAPTION_METRICS}

    def __call__(self, params: Any, extra: Any = None) -> dict[str, float]:
        """{task/subset/metric/who: value} for subsets "all" and the task's own (e.g. flag / nonflag)."""
        out: dict[str, float] = {}
        for name, task in self.tasks.items():
            idx = self.items[name]
            images, prompts = take_rows(task.images, idx), [task.prompts[i] for i in idx]
            refs = [task.references[i] for i in idx]
            answers = self.fns.generate(params, images, prompts)
            self.last_answers[name] = answers
            subsets = {"all": np.ones(len(idx), bool), **{k: np.asarray(v)[idx] for k, v in task.subsets.items()}}
            scored = self._scoring(params, task, idx) if self.scoring and task.classes else None
            for sub, mask in subsets.items():
                pick = np.flatnonzero(mask)
                if not len(pick):
                    continue
                sub_refs = [refs[i] for i in pick]
                res = self._scores(task, "model", [answers[i] for i in pick], sub_refs)
                for who, base in task.baselines.items():
                    res.update(self._scores(task, who, [base[idx[i]] for i in pick], sub_refs))
                if task.metric == "exact" and task.classes:  # chance: always the subset's most common answer
                    common = collections.Counter(r[0] for r in sub_refs).most_common(1)[0][0]
                    res.update(self._scores(task, "chance", [common] * len(pick), sub_refs))
                res["items"] = float(len(pick))
                if scored is not None:
                    res.update(self._scoring_metrics(task, *scored, mask))
                out.update({f"{name}/{sub}/{k}": v for k, v in res.items()})
            if self.verbose and jax.process_index() == 0:
                lines = [f"{name}: {prompts[i]!r} → {answers[i]!r} (reference {refs[i][0]!r})"
                         for i in range(min(self.examples, len(idx)))]
                print("\n".join(lines), flush=True)
        return out

    def _scoring(self, params: Any, task: Any, idx: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(positions q within idx, top-k hits): the answer with the highest log-likelihood among the task's
        classes, for evenly spaced queries such that queries × classes ≤ scoring_pairs."""
        q = scoring_queries(len(idx), len(task.classes), self.scoring_pairs)
        rows = idx[q]
        scores = self.fns.class_scores(params, take_rows(task.images, rows), task.classes,
                                       [task.prompts[i] for i in rows])
        return q, topk_hits(scores, np.asarray(task.labels)[rows], KS)

    @staticmethod
    def _scoring_metrics(task: Any, q: np.ndarray, hits: dict[int, np.ndarray], mask: np.ndarray) -> dict[str, float]:
        """Scoring-classifier top-k (and chance) over the scored queries inside `mask`."""
        inside = np.asarray(mask)[q]
        if not inside.any():
            return {}
        res = {f"scoring_top@{k}/model": float(np.mean(h[inside])) for k, h in hits.items()}
        res.update({f"scoring_top@{k}/chance": chance_topk(len(task.classes), k) for k in KS})
        res["scoring_queries"] = float(inside.sum())
        return res
