"""LiT with the packaged MiniLM: our WordPiece equals Hugging Face `tokenizers` on every emoji name, the imported
tower's sentence embedding equals a float64 NumPy BERT written from the safetensors names, and through `train()`
the locked tower stays bit-identical while its head and the image tower train."""
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import erf

from vlm_jax.config import apply_overrides, load_config
import emoji as emoji_lib
from vlm_jax.data.wordpiece import WordPieceTokenizer
from vlm_jax.models.bert import BertEncoder
from vlm_jax.pretrained import bert_fields, minilm, minilm_dir, read_safetensors
from vlm_jax.train.init_from import InitFromError, active, load_source, merge
from vlm_jax.train.trainer import Setup, finalize_config, train

ONE = "mesh=[('data', 1)]"  # these runs test no sharding: one device compiles faster

TRICKY = ["Flag: Côte d’Ivoire", "man_technologist 👨‍💻", "日本語のテキスト", "don't STOP-believing!!", "",
          "supercalifragilisticexpialidocious", "naïve café résumé", "a\tb\nc", "x" * 120, "ＦＵＬＬ width ½"]


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(minilm_dir() / "vocab.txt")


def test_wordpiece_equals_huggingface_tokenizers(tokenizer):
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    texts = [v["en"].strip(":").replace("_", " ") for v in emoji_lib.EMOJI_DATA.values()] + TRICKY  # CLDR names
    assert len(texts) > 1000
    for text in texts:
        assert [tokenizer.cls_id, *tokenizer.tokenize(text), tokenizer.sep_id] == reference.encode(text).ids, text
    rows = tokenizer.encode(["a grinning face", "x " * 40], 8)
    assert rows.shape == (2, 8) and rows[0, 4] == tokenizer.sep_id and rows[0, 5] == 0 and rows[1, -1] == 102
    assert tokenizer.decode(rows[:1]) == ["a grinning face"]


def _numpy_bert(t: dict, ids: np.ndarray, depth: int, heads: int, eps: float) -> np.ndarray:
    """Float64 BERT forward from the Hugging Face tensor names; mean pooling over non-pad tokens, unit norm."""
    t = {k: v.astype(np.float64) for k, v in t.items() if v.dtype.kind == "f"}

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    n = ids.shape[1]
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n] \
        + t["embeddings.token_type_embeddings.weight"][0]
    x = norm(x, "embeddings.LayerNorm")
    valid = ids != 0
    for i in range(depth):
        p = f"encoder.layer.{i}."
        split = lambda y: y.reshape(*y.shape[:2], heads, -1)  # noqa: E731
        q, k, v = (split(linear(x, p + f"attention.self.{w}")) for w in ("query", "key", "value"))
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        s = np.where(valid[:, None, None, :], s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = np.einsum("bhqk,bkhd->bqhd", a, v).reshape(x.shape)
        x = norm(x + linear(y, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = (x * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_imported_minilm_equals_a_float64_numpy_bert(tokenizer):
    fields, flat = minilm()
    ids = tokenizer.encode(["a grinning face with big eyes", "flag: japan", "red apple", "Ivory Coast"], 12)
    params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    ours, _ = BertEncoder(**fields).apply({"params": params}, jnp.asarray(ids))
    ours = np.asarray(ours, np.float64)
    ours /= np.linalg.norm(ours, axis=-1, keepdims=True)
    d = minilm_dir()
    cfg = bert_fields(d)
    reference = _numpy_bert(read_safetensors(d / "model.safetensors"), ids, cfg["depth"], cfg["num_heads"], cfg["eps"])
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    sims = reference @ reference.T  # a sanity check on the weights themselves: related names are closer
    assert sims[0, 2] < sims[1, 3] or sims[1, 3] > 0.3


def test_lit_keeps_the_locked_tower_bit_identical(data_dir, tmp_path):
    config = apply_overrides(finalize_config(load_config("experiments/emoji_lit.py:size=test")),
                             ["total_steps=3", "batch_size=16", "progress=False", "evals.sets=['emoji']", ONE,
                              "evals.probe_sets=[]", "evals.batch_size=128", "checkpoint.every_steps=100"])
    out = train(config, tmp_path / "lit")
    params = traverse_util.flatten_dict(jax.device_get(out["state"].params), sep="/")
    _, pretrained = minilm()
    for path, value in pretrained.items():
        np.testing.assert_array_equal(params["txt/" + path], value, err_msg=path)
    fresh = traverse_util.flatten_dict(jax.device_get(out["setup"].init_state(jax.random.key(config.seed)).params),
                                       sep="/")
    for trained in ("txt/head/kernel", "img/Transformer/encoderblock_0/mlp/Dense_0/kernel"):
        assert not np.array_equal(params[trained], fresh[trained]), trained
    assert 0.0 <= out["evals"]["zeroshot/emoji/cross/all/top@1/model"] <= 1.0


def test_init_from_pretrained_errors(data_dir):
    setup = Setup(finalize_config(load_config("experiments/emoji_lit.py:size=test")))
    abstract = setup.abstract_state().params
    source, _ = load_source(ml_collections.ConfigDict(dict(pretrained="minilm")))
    assert merge(abstract, source, ".*", [("", "txt/")])[1]["copied"] == 101
    with pytest.raises(InitFromError, match="no place"):
        merge(abstract, source, ".*", [])
    with pytest.raises(InitFromError, match="must be one of"):
        load_source(ml_collections.ConfigDict(dict(pretrained="bert-large")))
    with pytest.raises(InitFromError, match="not both"):
        active(ml_collections.ConfigDict(dict(pretrained="minilm", workdir="/somewhere")))
