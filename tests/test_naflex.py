"""NaFlex (native aspect ratio, a patch budget): the size rule and patches against transformers' SigLIP 2
processors (fixtures made with them), the tower against the fixed-resolution tower with the same parameters, and
padding that changes nothing. Parity of a whole Siglip2 model: test_interop.py."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.data import naflex as prep
from vlm_jax.models import naflex
from vlm_jax.models.vit import ViT

REF = dict(np.load(Path(__file__).parent / "fixtures" / "weights" / "hf_siglip2" / "reference.npz"))


def test_grid_rule_equals_siglip2s_on_384_shapes_patches_and_budgets():
    """transformers' get_image_size_for_max_num_patches (a binary search over the scale) on 16 shapes from 1x1 to
    1080x1920 and 33x2000, patches 8 / 14 / 16, budgets 1 … 1024; and the grid never exceeds the budget."""
    for h, w, patch, budget, th, tw in REF["size_rule"].tolist():
        rows, cols = prep.grid_for(h, w, patch, budget)
        assert (rows * patch, cols * patch) == (th, tw), (h, w, patch, budget)
        assert rows * cols <= budget or (rows, cols) == (1, 1)


def test_patches_equal_both_siglip2_processors():
    """Four images of different aspect ratios at a 20-patch budget: the same grids, masks and pixels (to float
    rounding) as Siglip2ImageProcessor (torchvision) and its PIL twin."""
    images = [REF[f"image_{i}"] for i in range(4)]
    got = prep.batch(images, 8, 20)
    for suffix in ("", "_pil"):
        np.testing.assert_array_equal(got["grid"], REF["spatial_shapes" + suffix])
        np.testing.assert_array_equal(got["mask"], REF["pixel_attention_mask" + suffix].astype(bool))
        real = got["mask"]
        np.testing.assert_allclose(prep.to_unit_range(got["patches"])[real], REF["pixel_values" + suffix][real],
                                   rtol=0, atol=1e-6)
    for i, (h, w) in enumerate(got["grid"]):  # row-major positions over the real patches
        want = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
        np.testing.assert_array_equal(got["positions"][i, :h * w], want)


def _resize_reference(table: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """torch's antialiased bilinear resize (align_corners=False) in float64, from its definition: each output
    pixel's source interval [i·s, (i+1)·s) (s = in / out) averaged with a triangle filter of half-width max(s, 1)
    around the interval's centre, the taps outside the grid dropped and the rest renormalised."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        s = n_in / n_out
        half = max(s, 1.0)
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            centre = (i + 0.5) * s
            for j in range(n_in):
                m[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / half)
            m[i] /= m[i].sum()
        return m
    r, c = weights(table.shape[0], rows), weights(table.shape[1], cols)
    return np.einsum("ig,jk,gkd->ijd", r, c, table.astype(np.float64))


@pytest.mark.parametrize("grid", [(3, 5), (10, 2), (4, 4), (1, 16), (7, 7)])
def test_position_resize_matches_the_reference(grid):
    table = np.random.default_rng(0).normal(size=(4, 4, 6)).astype(np.float32)
    h, w = grid
    rc = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(1, -1, 2)
    got = np.asarray(naflex.resized_posemb(jnp.asarray(table), jnp.asarray(rc), jnp.asarray([[h, w]])))
    np.testing.assert_allclose(got[0], _resize_reference(table, h, w).reshape(h * w, 6), rtol=0, atol=2e-6)


@pytest.fixture(scope="module")
def towers():
    """One set of parameters per pooling, shared by a fixed-resolution and a NaFlex call."""
    image = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
    out = {}
    for pool in ("map", "gap", "tok"):
        model = ViT(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=(4, 4), pool_type=pool, num_classes=8,
                    posemb_grid=4)
        out[pool] = (model, model.init(jax.random.PRNGKey(1), image))
    return image, out


def _as_naflex(image: jax.Array, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """16x16 images at patch 4 as a 4x4 NaFlex grid padded to `length` with random pixels and positions."""
    b = image.shape[0]
    patches = np.asarray(image).reshape(b, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 16, 48)
    pad = rng.normal(size=(b, length - 16, 48)).astype(np.float32) * 5
    rc = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(1, 16, 2).repeat(b, 0)
    junk = rng.integers(0, 9, size=(b, length - 16, 2))
    return dict(patches=np.concatenate([patches, pad], 1), positions=np.concatenate([rc, junk], 1).astype(np.int32),
                mask=np.arange(length)[None].repeat(b, 0) < 16, grid=np.array([[4, 4]] * b, np.int32))


@pytest.mark.parametrize("pool", ["map", "gap", "tok"])
def test_square_image_at_full_budget_equals_the_fixed_resolution_tower(towers, pool):
    """Same parameters, a square image: NaFlex at the full budget (and padded further, with junk in the padding)
    gives the fixed-resolution output to float tolerance (one convolution per patch instead of one over the
    image: a different summation order, ~1e-6); two different paddings give bit-identical outputs."""
    image, models = towers
    model, params = models[pool]
    fixed, _ = model.apply(params, image)
    rng = np.random.default_rng(1)
    a, _ = model.apply(params, _as_naflex(image, 16, rng))
    b, aux = model.apply(params, _as_naflex(image, 24, rng))
    c, _ = model.apply(params, _as_naflex(image, 24, rng))
    np.testing.assert_allclose(np.asarray(a), np.asarray(fixed), rtol=0, atol=5e-6)
    np.testing.assert_allclose(np.asarray(b), np.asarray(fixed), rtol=0, atol=5e-6)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    assert aux["mask"].shape == ((2, 25) if pool == "tok" else (2, 24))


def test_naflex_refuses_what_it_cannot_do(towers):
    image, models = towers
    model, params = models["map"]
    batch = _as_naflex(image, 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="missing \\['grid'\\]"):
        model.apply(params, {k: v for k, v in batch.items() if k != "grid"})
    with pytest.raises(ValueError, match="posemb_grid"):
        ViT(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=(4, 4)).init(jax.random.PRNGKey(0), batch)
    with pytest.raises(ValueError, match="budget"):
        prep.grid_for(10, 10, 4, 0)


def test_a_fixed_image_of_another_grid_reads_the_resized_table(towers):
    """With posemb_grid set, a 24x24 image (6x6 patches, table 4x4) takes the table resized as a NaFlex image of
    that grid does: the fixed and NaFlex paths agree."""
    _, models = towers
    model, params = models["gap"]
    image = jax.random.uniform(jax.random.PRNGKey(5), (1, 24, 24, 3), minval=-1, maxval=1)
    fixed, _ = model.apply(params, image)
    patches = np.asarray(image).reshape(1, 6, 4, 6, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 36, 48)
    rc = np.stack(np.meshgrid(np.arange(6), np.arange(6), indexing="ij"), -1).reshape(1, 36, 2).astype(np.int32)
    flex, _ = model.apply(params, dict(patches=patches, positions=rc, mask=np.ones((1, 36), bool),
                                       grid=np.array([[6, 6]], np.int32)))
    np.testing.assert_allclose(np.asarray(flex), np.asarray(fixed), rtol=0, atol=5e-6)
