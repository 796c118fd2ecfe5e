"""Decoder-only image prefix-LM and the PrefixLM objective: prefix masks, loss on the suffix only (float64),
cached generation equals the full forward pass, sharded runs equal one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_generative import TINY, _batches, _np_cross_entropy, _run, _teacher_forced_greedy
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.losses.generative import shift_right
from vlm_jax.train.trainer import Setup, finalize_config

B = 16


def _setup(mesh=(("data", 1),), more=()):
    c = finalize_config(load_config("experiments/emoji_prefixlm.py:size=test"))
    return Setup(apply_overrides(c, [t for t in TINY if "decoder.num_heads" not in t and "image.num_heads" not in t]
                                 + ["model.image.num_heads=4", "model.decoder.num_heads=4",
                                    f"mesh={list(mesh)!r}", *more]))


@pytest.fixture(scope="module")
def prefixlm(data_dir):
    setup = _setup()
    return setup, jax.device_get(setup.init_state(jax.random.key(0)).params)


def _hidden(model, params, image, tokens, prefix_len):
    """(logits [B, L, V], first block's output over image + text positions)."""
    context, _ = model.apply({"params": params}, image, method="encode")
    logits, aux = model.apply({"params": params}, tokens, prefix=context["image"], prefix_len=prefix_len,
                              method=lambda m, t, **kw: m.text_decoder(t, **kw))
    return logits, aux["block00"], context["image"].shape[1]


def test_prefix_masks(prefixlm):
    setup, params = prefixlm
    obj, model = setup.objective, setup.objective.model()
    batch = _batches(setup, 1)[0]
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, 500, (B, 12)), jnp.int32)  # no padding
    n = jnp.full((B,), 5)
    base, h, t = _hidden(model, params, batch["image"], tokens, n)
    suffix_changed, h2, _ = _hidden(model, params, batch["image"], tokens.at[:, 8].set(7), n)
    np.testing.assert_allclose(h2[:, :t + 5], h[:, :t + 5], rtol=1e-5, atol=1e-6)  # image + prefix: unchanged
    np.testing.assert_allclose(suffix_changed[:, :5], base[:, :5], rtol=1e-5, atol=1e-6)
    prefix_changed, h3, _ = _hidden(model, params, batch["image"], tokens.at[:, 4].set(7), n)
    assert not np.allclose(prefix_changed[:, 8:], base[:, 8:], atol=1e-6)  # the suffix reads the prefix
    assert not np.allclose(h3[:, :t], h[:, :t], atol=1e-6)  # image tokens attend to every prefix token …
    assert not np.allclose(prefix_changed[:, 0], base[:, 0], atol=1e-6)  # … and so does the first text position
    causal, hc, _ = _hidden(model, params, batch["image"], tokens.at[:, 4].set(7), jnp.zeros((B,), int))
    base0, h0, _ = _hidden(model, params, batch["image"], tokens, jnp.zeros((B,), int))
    np.testing.assert_allclose(hc[:, :t + 4], h0[:, :t + 4], rtol=1e-5, atol=1e-6)  # n = 0: text is causal
    del obj, causal, base0


def test_loss_covers_exactly_the_suffix(prefixlm):
    """SimVLM: with s caption tokens in the prefix (decoder inputs BOS, t_0 … t_{s-1}, bidirectional with the image;
    s = 0: the image alone, as generation prefills it), every later token t_s … EOS is a target, t_s included.
    Targets written out per row; the prefix positions never see t_s."""
    setup, params = prefixlm
    obj, model = setup.objective, setup.objective.model()
    batch = {k: jnp.asarray(v) for k, v in _batches(setup, 1)[0].items()}
    text = np.asarray(batch["text"])
    rng = jax.random.key(5)
    split = np.asarray(obj.split_points(batch["text"], rng, True))
    length = (text != 0).sum(1)
    assert ((split >= 0) & (split < length)).all() and len(set(split.tolist())) > 1
    targets = np.zeros(text.shape, bool)
    for r in range(text.shape[0]):
        for j in range(text.shape[1]):
            targets[r, j] = split[r] <= j < length[r]
    inputs = shift_right(batch["text"], obj.ids["bos"])
    prefix = jnp.asarray(np.where(split > 0, split + 1, 0))  # decoder positions in the prefix: BOS + s tokens
    logits = np.asarray(model.apply({"params": params}, batch["image"], inputs, prefix_len=prefix)[0][2])
    loss, (metrics, _) = obj.loss(params, {}, batch, rng, train=True)
    assert float(metrics["tokens"]) == targets.sum()
    np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, text, targets), rtol=1e-5)
    r = int(np.argmax(np.where(split + 1 < text.shape[1], split, -1)))  # a long prefix, t_s not last: change t_s
    assert split[r] > 0
    changed = text.copy()
    changed[r, split[r]] = 3 + (text[r, split[r]] - 2) % 50
    other = np.asarray(model.apply({"params": params}, batch["image"],
                                   shift_right(jnp.asarray(changed), obj.ids["bos"]), prefix_len=prefix)[0][2])
    np.testing.assert_allclose(other[r, :split[r] + 1], logits[r, :split[r] + 1], rtol=1e-5, atol=1e-6)
    assert np.abs(other[r, split[r] + 1] - logits[r, split[r] + 1]).max() > 1e-4  # t_s is read after the prefix
    draws = np.concatenate([np.asarray(obj.split_points(batch["text"], jax.random.key(s), True)) for s in range(200)])
    rows = np.tile(length, 200)
    for k in (1, 3):  # uniform over 0 … len−1: P(split = 0) = 1/len per row
        sel = rows == np.unique(length)[k % len(np.unique(length))]
        p = 1 / rows[sel][0]
        assert abs(np.mean(draws[sel] == 0) - p) < 4 * np.sqrt(p * (1 - p) / sel.sum())
    assert not np.asarray(obj.split_points(batch["text"], rng, False)).any()


def test_cached_generation_equals_full_forward(prefixlm):
    setup, params = prefixlm
    obj = setup.objective
    images = _batches(setup, 1)[0]["image"][:5]
    got = obj.caption_fns.generate_tokens(params, images)
    np.testing.assert_array_equal(got, _teacher_forced_greedy(obj.model(), params, images, obj.ids,
                                                              obj.caption_fns.max_len))


@pytest.fixture(scope="module")
def reference(data_dir):
    setup = _setup()
    batches = _batches(setup)
    return batches, _run(setup, batches)


@pytest.mark.parametrize("mesh", [[("fsdp", 8)], [("data", 4), ("tensor", 2)]])
def test_sharded_prefixlm_equals_one_device(reference, mesh):
    batches, (want_losses, want_params, _) = reference
    losses, params, _ = _run(_setup(mesh), batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, want_params)
