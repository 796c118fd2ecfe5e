"""Batched augmentation (vlm_jax.data.augment) against per-image references: PIL's resampling, float64 loops."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from vlm_jax.data import augment, emoji, ops

STYLE = ops.STYLE_AUGMENT


@pytest.fixture(scope="module")
def images():
    """Four 64 px emoji in two styles (white background, outlines, gradients)."""
    return np.stack([emoji.render(e, style, 64) for e in ("\U0001F34E", "\U0001F697") for style in ("noto", "openmoji")])


def _params(**kw) -> np.ndarray:
    p = {**dict(x0=0.0, y0=0.0, w=64.0, h=64.0, brightness=1.0, contrast=1.0, saturation=1.0), **kw}
    return np.array([p.get(k, 0.0) for k in augment.PARAMS])


def _pil_crop(img, x0, y0, cw, ch, size):
    """Reference: PIL bilinear resize of the box, on a white canvas when the box leaves the image."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    pad = int(np.ceil(max(-x0, -y0, x0 + cw - w, y0 + ch - h, 0.0)))
    if pad:
        canvas = Image.new("RGB", (w + 2 * pad, h + 2 * pad), (255, 255, 255))
        canvas.paste(pil, (pad, pad))
        pil, x0, y0 = canvas, x0 + pad, y0 + pad
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)))


def test_crop_matches_pil_bilinear(images):
    rng = np.random.default_rng(0)
    for scale in [(0.2, 0.4), (0.6, 1.0), (1.5, 3.0)]:  # zoom in, the default, zoom out (white canvas)
        cfg = {"crop": {"scale": scale}}
        params = np.stack([augment.draw(rng, cfg, images.shape[1:]) for _ in images])
        out = augment.apply(images, params, cfg, 32)
        for img, p, o in zip(images, params, out):
            ref = _pil_crop(img, *p[:4], 32).astype(int)
            assert np.abs(o.astype(int) - ref).max() <= 1  # PIL's fixed-point coefficients: off by one at most


def test_crop_geometry():
    ramp = np.repeat(np.repeat((np.arange(64) * 4)[None, :, None], 64, 0), 3, 2).astype(np.uint8)
    half = augment.apply(ramp[None], _params(x0=16.0, y0=16.0, w=32.0, h=32.0)[None], {"crop": {}}, 64)[0]
    assert 120 <= int(half[..., 0].max()) - int(half[..., 0].min()) <= 135  # half the width -> half the ramp
    out = augment.apply(ramp[None], _params(x0=-32.0, y0=-32.0, w=128.0, h=128.0)[None], {"crop": {}}, 64)[0]
    assert (out[:14] == 255).all() and (out[:, -14:] == 255).all()  # zoom out ×2: a white border


def test_resize_matches_pil_bicubic(images):
    out = augment.apply(images, np.stack([_params()] * len(images)), {}, 32).astype(int)
    ref = np.stack([np.asarray(Image.fromarray(i).resize((32, 32), Image.Resampling.BICUBIC)) for i in images])
    diff = np.abs(out - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05
    assert np.array_equal(augment.apply(images, np.stack([_params()] * 4), {}, 64), images)  # same size: identity


def _ref_dilate(mask, r):
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = np.zeros_like(mask)
            h, w = mask.shape
            shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out |= shifted
    return out


def _ref_outline(img, width, inner):
    """Reference: per-image outline with brute-force square dilation."""
    x = img.astype(int)
    mask = x.min(-1) < 255 - 16
    line = _ref_dilate(mask, (width + 1) // 2) & _ref_dilate(~mask, width // 2)
    if inner:
        edge = np.zeros(mask.shape, bool)
        edge[:, :-1] |= np.abs(x[:, 1:] - x[:, :-1]).max(-1) > 64
        edge[:-1] |= np.abs(x[1:] - x[:-1]).max(-1) > 64
        line |= _ref_dilate(edge & mask, (width - 1) // 2)
    out = img.copy()
    out[line] = 0
    return out


@pytest.mark.parametrize("width,inner", [(1, True), (2, True), (3, False)])
def test_outline_matches_reference(images, width, inner):
    cfg = {"outline": {"inner": inner}}
    out = augment.apply(images, np.stack([_params(outline=width)] * len(images)), cfg, 64)
    for img, o in zip(images, out):
        assert np.array_equal(o, _ref_outline(img, width, inner))
        assert (o != img).any() and (o[0, 0] == 255).all()


def _ref_jitter(img, fb, fc, fs, turns):
    """Reference in float64, pixel by pixel for the hue: YIQ chroma rotation by `turns`."""
    luma = np.array([0.299, 0.587, 0.114])
    x = np.clip(img.astype(np.float64) * fb, 0, 255)
    mean = (x @ luma).mean()
    x = np.clip((x - mean) * fc + mean, 0, 255)
    gray = (x @ luma)[..., None]
    x = np.clip(gray + (x - gray) * fs, 0, 255)
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a = 2 * np.pi * turns
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:2]):
        y, i, q = yiq @ x[idx]
        i, q = i * np.cos(a) - q * np.sin(a), i * np.sin(a) + q * np.cos(a)
        out[idx] = np.linalg.solve(yiq, [y, i, q])
    return np.clip(out, 0, 255)


def test_jitter_matches_float64_reference(images):
    small = augment.apply(images, np.stack([_params()] * 4), {}, 16)  # 16 px: the per-pixel reference is slow
    factors = [(1.2, 0.8, 1.3, 0.1), (0.7, 1.3, 0.6, -0.05), (1.0, 1.0, 1.0, 0.25), (1.1, 1.0, 0.0, 0.0)]
    params = np.stack([_params(jitter=1, brightness=b, contrast=c, saturation=s, hue=h) for b, c, s, h in factors])
    out = augment.apply(small, params, {"jitter": {}}, 16).astype(int)
    for img, f, o in zip(small, factors, out):
        ref = np.rint(_ref_jitter(img, *f)).astype(int)
        assert np.abs(o - ref).max() <= 1
    assert (out[3] == out[3][..., :1]).all()  # saturation 0: gray


def test_hue_rotation_keeps_luma_and_composes():
    rgb = np.random.default_rng(0).uniform(60, 190, (5, 3, 4, 4)).astype(np.float32)  # far from clipping
    m = augment.hue_matrices(np.array([0.1, 0.2, 0.3, 0.5, 1.0]))
    out = np.matmul(m, rgb.reshape(5, 3, 16))
    assert np.allclose(augment.luma(out.reshape(rgb.shape)), augment.luma(rgb), atol=1e-3)
    assert np.allclose(m[4], np.eye(3), atol=1e-5)  # a full turn
    assert np.allclose(m[0] @ m[1], m[2], atol=1e-5)  # 0.1 + 0.2 turns = 0.3 turns


def _ref_blur(img, sigma):
    """Reference: 2-D Gaussian (truncated at ceil(3σ)), edge pixels repeated, in float64."""
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    out = np.zeros(img.shape)
    for i, ki in enumerate(k):
        for j, kj in enumerate(k):
            out += ki * kj * x[i:i + h, j:j + w]
    return out


def test_blur_matches_reference(images):
    sigmas = [0.3, 0.7, 1.0, 2.0]
    out = augment.apply(images, np.stack([_params(blur=s) for s in sigmas]), {}, 64).astype(int)
    for img, s, o in zip(images, sigmas, out):
        assert np.abs(o - np.rint(_ref_blur(img, s))).max() <= 1
        pil = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=s))).astype(int)
        assert np.abs(o - pil).mean() < 1.5  # PIL approximates the Gaussian with box blurs


def test_flip_gray_flatten(images):
    params = np.stack([_params(flip=1), _params(gray=1), _params(colors=4), _params()])
    out = augment.apply(images, params, {}, 64)
    assert np.array_equal(out[0], images[0][:, ::-1])
    assert (out[1] == out[1][..., :1]).all()
    assert np.abs(out[1][..., 0].astype(float) - images[1] @ np.array([0.299, 0.587, 0.114])).max() <= 1
    assert len(np.unique(out[2].reshape(-1, 3), axis=0)) <= 4
    assert np.array_equal(out[3], images[3])


def test_draw_distribution():
    rng = np.random.default_rng(0)
    params = np.stack([augment.draw(rng, STYLE, (64, 64, 3)) for _ in range(4000)])
    col = lambda k: params[:, augment.P[k]]  # noqa: E731
    area = col("w") * col("h") / 64 ** 2
    assert area.min() >= 0.6 - 1e-9 and area.max() <= 1.0 + 1e-9
    aspect = col("w") / col("h")
    assert aspect.min() >= 3 / 4 - 1e-9 and aspect.max() <= 4 / 3 + 1e-9
    lo, hi = np.minimum(0, 64 - col("w")), np.maximum(0, 64 - col("w"))  # wider than the image: a white margin
    assert ((col("x0") >= lo - 1e-9) & (col("x0") <= hi + 1e-9)).all()
    for key, p in [("jitter", 0.8), ("gray", 0.1), ("blur", 0.2), ("colors", 0.2), ("outline", 0.3), ("flip", 0)]:
        assert abs((col(key) > 0).mean() - p) < 0.03, key
    assert set(col("colors")[col("colors") > 0].astype(int)) == set(range(3, 13))
    assert set(col("outline")[col("outline") > 0].astype(int)) == {1, 2}
    on = col("jitter") > 0
    assert np.abs(col("hue")[on]).max() <= 0.1 and np.abs(col("saturation")[on] - 1).max() <= 0.4
    assert np.array_equal(augment.draw(np.random.default_rng(5), STYLE, (64, 64, 3)),
                          augment.draw(np.random.default_rng(5), STYLE, (64, 64, 3)))


def test_an_example_does_not_depend_on_its_batch(images):
    """Processes batch different examples together: each result must equal the example augmented alone."""
    rng = np.random.default_rng(1)
    src = images[rng.integers(0, 4, 48)]
    params = np.stack([augment.draw(rng, STYLE, (64, 64, 3)) for _ in src])
    params[:4, augment.P["blur"]] = [0.1, 0.5, 1.0, 0.0]  # different blur supports side by side
    batch = augment.apply(src, params, STYLE, 32)
    for i in range(len(src)):
        assert np.array_equal(batch[i], augment.apply(src[i:i + 1], params[i:i + 1], STYLE, 32)[0]), i


def test_collate_groups_shapes_and_keeps_finished_images(images):
    rng = np.random.default_rng(2)
    big = np.asarray(Image.fromarray(images[0]).resize((80, 96)))
    done = np.zeros((32, 32, 3), np.float32)
    elements = [{"image": images[1], "augment": augment.draw(rng, STYLE, images[1].shape), "text": np.arange(3)},
                {"image": done, "text": np.arange(3) + 1},
                {"image": big, "augment": augment.draw(rng, STYLE, big.shape), "text": np.arange(3) + 2}]
    batch = augment.collate(elements, STYLE, 32)
    assert set(batch) == {"image", "text"} and batch["image"].dtype == np.float32
    assert np.array_equal(batch["text"], np.stack([e["text"] for e in elements]))
    for i in (0, 2):
        alone = augment.apply(elements[i]["image"][None], elements[i]["augment"][None], STYLE, 32)[0]
        assert np.array_equal(batch["image"][i], ops.normalize(alone))
    assert np.array_equal(batch["image"][1], done)


def test_uint8_batches_become_the_host_normalisation_in_the_train_step(images):
    """A pipeline may ship uint8 images (`uint8=True`, the shard stream does): the jitted `unit_range` the train
    step applies gives the float batch `collate` would have made, x / 127.5 - 1 in float64, to float32 rounding."""
    import jax

    rng = np.random.default_rng(3)
    elements = [{"image": images[i % 4], "augment": augment.draw(rng, STYLE, images[i % 4].shape),
                 "text": np.arange(3) + i} for i in range(6)]
    as_float = augment.collate(elements, STYLE, 32)
    as_uint8 = augment.collate(elements, STYLE, 32, uint8=True)
    assert as_uint8["image"].dtype == np.uint8 and np.array_equal(as_uint8["text"], as_float["text"])
    on_device = jax.jit(augment.unit_range)(as_uint8)
    reference = as_uint8["image"].astype(np.float64) / 127.5 - 1.0
    assert on_device["image"].dtype == np.float32 and np.array_equal(on_device["text"], as_uint8["text"])
    np.testing.assert_allclose(np.asarray(on_device["image"]), reference, rtol=0, atol=2e-7)
    np.testing.assert_allclose(as_float["image"], reference, rtol=0, atol=2e-7)
