"""NaFlex preprocessing (SigLIP 2): an image resized, keeping its aspect ratio, to the largest patch grid within a
sequence budget, cut into patches with each patch's (row, column), padded to the budget with a mask. The model
side (the batch layout, the per-example position resize) is `vlm_jax.models.naflex`."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

MAX_SCALE = 100.0  # SigLIP 2's search range tops out at 100x: a 1 px image becomes ceil(100 / patch) patches


def grid_for(height: int, width: int, patch: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of the largest grid within `budget` patches for an image of this size at a common scale s:
    rows = max(1, ceil(height·s / patch)), cols likewise. The patch count only grows with s and changes just past
    s = k·patch / side, so the largest feasible s is one of those points (or the 100x cap): try them all."""
    if budget < 1 or patch < 1 or height < 1 or width < 1:
        raise ValueError(f"NaFlex needs positive sizes and budget, got {height}x{width}, patch {patch}, "
                         f"budget {budget}")

    def cells(s: float) -> tuple[int, int]:
        return max(1, math.ceil(height * s / patch - 1e-9)), max(1, math.ceil(width * s / patch - 1e-9))

    candidates = {MAX_SCALE}
    for side in (height, width):
        candidates.update(k * patch / side for k in range(1, budget + 1) if k * patch / side <= MAX_SCALE)
    best = (1, 1)
    for s in sorted(candidates):
        r, c = cells(s)
        if r * c <= budget:
            best = (r, c)
    return best


def patchify(image: np.ndarray, patch: int, budget: int) -> dict[str, np.ndarray]:
    """One uint8 [H, W, 3] image → NaFlex arrays padded to `budget`: patches uint8 [budget, patch·patch·3] (pixels
    in row, column, channel order; zeros where padded), positions int32 [budget, 2], mask bool [budget], grid int32
    [2]. Resized with PIL's bilinear filter (antialiased when shrinking), as SigLIP 2's processor does."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"NaFlex patchify needs an [H, W, 3] image, got shape {image.shape}")
    rows, cols = grid_for(image.shape[0], image.shape[1], patch, budget)
    size = (cols * patch, rows * patch)
    if (image.shape[1], image.shape[0]) != size:
        image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
    cut = image.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    n = rows * cols
    patches = np.zeros((budget, patch * patch * 3), np.uint8)
    patches[:n] = cut
    positions = np.zeros((budget, 2), np.int32)
    idx = np.arange(n)
    positions[:n, 0], positions[:n, 1] = idx // cols, idx % cols
    mask = np.arange(budget) < n
    return dict(patches=patches, positions=positions, mask=mask, grid=np.array([rows, cols], np.int32))


def batch(images: Sequence[np.ndarray], patch: int, budget: int) -> dict[str, np.ndarray]:
    """A list of uint8 images (any sizes) as one NaFlex batch (leading axis N)."""
    parts = [patchify(im, patch, budget) for im in images]
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def to_unit_range(patches: np.ndarray) -> np.ndarray:
    """uint8 patch pixels → float32 in [-1, 1] (the codebase's x / 127.5 − 1)."""
    return patches.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


# ------------------------------------------------------------------------------------------ training batches

CONFIG_DEFAULTS = dict(budgets=(), patch=0, eval_budgets=())
# data.naflex: budgets — the sequence budgets (patches per image) a training batch draws from, one per batch
# (empty: fixed resolution); patch — the model's patch size (checked against model.image); eval_budgets — the
# budgets the evaluators run at (empty: every training budget).


@dataclasses.dataclass(frozen=True)
class Budgets:
    """A dataset's NaFlex setting: the patch size, the training budgets drawn per batch, the evaluation budgets."""

    patch: int
    train: tuple[int, ...]
    eval: tuple[int, ...]

    @property
    def largest(self) -> int:
        """The largest training budget (the shape parameters are created with)."""
        return max(self.train)


def from_config(section: Any) -> Budgets | None:
    """`data.naflex` → Budgets, or None when no budget is set (fixed resolution); errors name the keys."""
    if not section:
        return None
    section = dict(section)
    unknown = sorted(set(section) - set(CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown data.naflex keys {unknown}; valid: {sorted(CONFIG_DEFAULTS)}")
    train = tuple(int(b) for b in section.get("budgets") or ())
    evals = tuple(int(b) for b in section.get("eval_budgets") or ()) or train
    patch = int(section.get("patch") or 0)
    if not train:
        if section.get("eval_budgets") or patch:
            raise ValueError("data.naflex.eval_budgets / patch are set but data.naflex.budgets is empty: set the "
                             "training budgets (e.g. (64, 144, 256)) or leave data.naflex unset")
        return None
    if patch < 1:
        raise ValueError(f"data.naflex.patch must be the model's patch size (> 0), got {patch}")
    if min(train + evals) < 1:
        raise ValueError(f"data.naflex budgets must be positive, got budgets {train}, eval_budgets {evals}")
    return Budgets(patch=patch, train=train, eval=evals)


def budget_for(seed: int, index: int, budgets: Sequence[int]) -> int:
    """The budget of batch `index`: a uniform draw seeded by (seed, index) — the same on every host (each host
    produces its batch `index` for the same step) and after a resume (the index is part of the iterator state)."""
    return int(budgets[int(np.random.default_rng([int(seed), int(index)]).integers(len(budgets)))])


def collate(elements: Sequence[dict[str, Any]], cfg: dict[str, Any], patch: int, budget: int
            ) -> dict[str, Any]:
    """A batch of NaFlex images from preprocessed elements (uint8 "image" + "augment" parameters from
    `augment.draw`): each crop box resized (bilinear, antialiased) to the largest grid of its aspect ratio within
    `budget`, the augmentation applied at that size, cut into uint8 patches and padded (`patchify`'s layout).
    Every other field is stacked."""
    from vlm_jax.data import augment

    params = np.stack([e["augment"] for e in elements])
    heights, widths = params[:, augment.P["h"]], params[:, augment.P["w"]]
    grids = [grid_for(max(1, round(h)), max(1, round(w)), patch, budget) for h, w in zip(heights, widths)]
    groups: dict[tuple, list[int]] = {}
    for i, (e, g) in enumerate(zip(elements, grids)):
        groups.setdefault((e["image"].shape, g), []).append(i)
    n = len(elements)
    out = dict(patches=np.zeros((n, budget, patch * patch * 3), np.uint8), positions=np.zeros((n, budget, 2), np.int32),
               mask=np.zeros((n, budget), bool), grid=np.zeros((n, 2), np.int32))
    for (_, (rows, cols)), idx in groups.items():
        src = np.stack([elements[i]["image"] for i in idx])
        pixels = augment.apply(src, params[idx], cfg, (rows * patch, cols * patch), kind="bilinear")
        k = rows * cols
        out["patches"][idx, :k] = pixels.reshape(len(idx), rows, patch, cols, patch, 3).transpose(
            0, 1, 3, 2, 4, 5).reshape(len(idx), k, -1)
        cells = np.arange(k)
        out["positions"][idx, :k, 0], out["positions"][idx, :k, 1] = cells // cols, cells % cols
        out["mask"][idx, :k] = True
        out["grid"][idx] = (rows, cols)
    keys = [k for k in elements[0] if k not in ("image", "augment")]
    rest = {k: augment._stack([e[k] for e in elements]) for k in keys}
    return {"image": out, **rest}


def spec(batch_size: int, patch: int, budget: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of a NaFlex batch (float32 patches, as the train step sees them)."""
    return {"patches": ((batch_size, budget, patch * patch * 3), np.dtype(np.float32)),
            "positions": ((batch_size, budget, 2), np.dtype(np.int32)),
            "mask": ((batch_size, budget), np.dtype(bool)), "grid": ((batch_size, 2), np.dtype(np.int32))}


def eval_inputs(images: Sequence[np.ndarray], patch: int, budget: int) -> dict[str, np.ndarray]:
    """Evaluation images (uint8, any sizes) as a NaFlex batch with float32 patches in [-1, 1]."""
    out = batch(images, patch, budget)
    return dict(out, patches=to_unit_range(out["patches"]))
