"""CLIPPO: one shared tower, captions rendered with Unifont (in several languages), trained by the one trainer."""
import jax
import ml_collections
import numpy as np
import pytest

from vlm_jax.config import load_config
from vlm_jax.data import emoji_tfds, image_text, multilingual
from vlm_jax.data.image_text import PREPARED_SIZE
from vlm_jax.data.render_text import render_to_float
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.models import OneTower
from vlm_jax.train.trainer import Setup, finalize_config

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(16, 16), posemb="sincos2d", pool_type="map")


def test_one_tower_shares_weights():
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    shared = OneTower(image=TOWER, embed_dim=8)
    params = shared.init(jax.random.key(1), x, x)
    (zimg, ztxt), _ = shared.apply(params, x, x)
    np.testing.assert_array_equal(zimg, ztxt)  # same pixels, same tower → same embedding
    heads = OneTower(image=TOWER, embed_dim=8, separate_heads=True)
    hp = heads.init(jax.random.key(1), x, x)
    (zimg, ztxt), _ = heads.apply(hp, x, x)
    assert not np.allclose(zimg, ztxt) and {"img_head", "txt_head", "tower"} <= set(hp["params"])
    (_, z64), _ = shared.apply(params, None, jax.numpy.zeros((2, 64, 64, 3)))  # any text-image size
    assert z64.shape == (2, 8)


# ---- parameter counts in closed form, from the architecture (layers.py, vit.py, text.py, *_tower.py) ---------

def _layer_norm(d):
    return 2 * d  # scale, bias


def _dense(n_in, n_out):
    return n_in * n_out + n_out  # kernel, bias


def _attention(d, heads):
    hk = heads * (d // heads)  # heads × head_dim
    return 3 * (d * hk + hk) + hk * d + d  # q/k/v kernels [d, h, k] and biases [h, k]; out kernel [h, k, d], bias [d]


def _mlp(d, mlp_dim):
    return _dense(d, mlp_dim) + _dense(mlp_dim, d)


def _encoder(d, depth, mlp_dim, heads):
    block = _layer_norm(d) + _attention(d, heads) + _layer_norm(d) + _mlp(d, mlp_dim)
    return depth * block + _layer_norm(d)  # + encoder_norm


def _map_head(d, mlp_dim, heads):
    return d + _attention(d, heads) + _layer_norm(d) + _mlp(d, mlp_dim)  # probe [1, 1, d], attention, LN, MLP


def _vit(m, image_size, num_classes):
    d, (ph, pw) = m["width"], m["patch_size"]
    n = (image_size // ph) * (image_size // pw)
    pos = {"learn": n * d, "sincos2d": 0}[m["posemb"]]  # sincos: fixed, no parameters
    pool = {"map": _map_head(d, m["mlp_dim"], m["num_heads"]), "gap": 0}[m["pool_type"]]
    return (ph * pw * 3 * d + d + pos + _encoder(d, m["depth"], m["mlp_dim"], m["num_heads"]) + pool
            + _dense(d, num_classes))


def _text(m, vocab, num_classes):
    d = m["width"]
    assert m["pool_type"] == "last"  # pooling without parameters
    return (vocab * d + m["max_len"] * d + _encoder(d, m["depth"], m["mlp_dim"], m["num_heads"])
            + _dense(d, num_classes))


def _temperature_and_bias(model):
    return {"t": 1, **({"b": 1} if model.get("bias_init") is not None else {})}


def _counts(setup):
    """Parameter count per top-level entry (towers, t, b) of the model the trainer builds."""
    params = jax.eval_shape(setup.init_state, jax.random.key(0)).params
    return {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_parameter_counts_match_the_architecture(data_dir, loss):
    count, want = {}, {}
    for name in ("emoji_two_tower", "emoji_clippo"):
        c = finalize_config(load_config(f"experiments/{name}.py:loss={loss}"))
        count[name] = _counts(Setup(c))
        m, e, size = c.model.to_dict(), c.model.embed_dim, c.data.image_size
        want[name] = {"img": _vit(m["image"], size, e)} if name == "emoji_two_tower" else \
            {"tower": _vit(m["image"], size, e)}
        if name == "emoji_two_tower":
            vocab = Tokenizer(emoji_tfds.tokenizer_path(data_dir, PREPARED_SIZE)).vocab_size  # vocab_size=0: data's
            assert m["text"]["vocab_size"] == 0 and 259 < vocab <= 1024
            want[name]["txt"] = _text(m["text"], vocab, e)
        want[name].update(_temperature_and_bias(m))
        assert count[name] == want[name], name
    # CLIPPO has no text tower: about half of CLIP's parameters.
    assert 0.3 < sum(count["emoji_clippo"].values()) / sum(count["emoji_two_tower"].values()) < 0.7, count


def test_rendered_multilingual_captions_reach_the_batch(data_dir):
    cfg = ml_collections.ConfigDict(dict(name="emoji", image_size=32, text_format="render", text_image_size=64,
                                         languages=("ko",), templates=["{}"], augment={}))
    data = image_text.get(cfg)
    assert data.text_spec(4) == ((4, 64, 64, 3), np.float32)
    np.testing.assert_allclose(data.tokenize(["a cat"]), render_to_float(["a cat"], 64), atol=1e-6)
    noto = emoji_tfds.load_split(data_dir, "noto", PREPARED_SIZE)
    char = dict(zip(np.asarray(noto["concept"]).tolist(), noto["emoji"]))
    batch = next(iter(data.train(8, 0, 0, 1)))
    names = [multilingual.name_of(char[int(c)], "ko") for c in batch["concept"]]
    assert all(names) and any(ord(ch) >= 0xAC00 for ch in names[0])  # Hangul
    np.testing.assert_allclose(batch["text"], render_to_float(names, 64), atol=1e-6)

