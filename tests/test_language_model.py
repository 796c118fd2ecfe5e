"""The language model on the text corpus: held-out nll against a float64 log-softmax of the model's logits and the
unigram baseline against a Counter; KV-cached greedy continuation against a brute-force loop of full forward
passes; the LM through train(), where it beats the uniform distribution, with exact FLOPs."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def lm(data_dir):
    import jax

    from vlm_jax.config import load_config
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import finalize_config

    obj = get_objective(finalize_config(load_config("experiments/text_lm.py:size=test")))
    model = obj.model()
    params = model.init(jax.random.key(0), **{k: np.zeros(v.shape, v.dtype)
                                              for k, v in obj.init_batch(2).items()})["params"]
    return obj, model, jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                                    is_leaf=lambda x: hasattr(x, "unbox"))


def test_held_out_nll_and_unigram_against_float64(lm):
    from vlm_jax.evals.language_model import PerplexityEvaluator

    obj, model, params = lm
    ids = obj.ids
    sentences = obj.data.held_out()[:40]
    train = obj.data.tokenize(obj.data.held_out()[100:400])  # any token rows serve as the unigram's counts
    ev = PerplexityEvaluator(model, obj.data.tokenize, obj.data.decode, ids, sentences, train, batch_size=16,
                             samples=0)
    got = ev(params, {})
    tokens = obj.data.tokenize(sentences)
    inputs = np.concatenate([np.full((len(tokens), 1), ids["bos"]), tokens[:, :-1]], axis=1)
    logits = np.asarray(model.apply({"params": params}, inputs)[0], np.float64)
    total, count = 0.0, 0
    for row, targets in zip(logits, tokens):
        for position, target in enumerate(targets):
            if target == ids["pad"]:
                break
            z = row[position]
            total += np.log(np.exp(z - z.max()).sum()) + z.max() - z[target]
            count += 1
    assert got["test/tokens"] == count
    np.testing.assert_allclose(got["test/all/nll/model"], total / count, rtol=1e-5)
    np.testing.assert_allclose(got["test/all/perplexity/model"], math.exp(total / count), rtol=1e-5)
    counts = collections.Counter(int(t) for t in train.ravel() if t != ids["pad"])
    norm = sum(counts.values()) + ids["vocab"]
    want = -np.mean([math.log((counts[int(t)] + 1) / norm) for t in tokens.ravel() if t != ids["pad"]])
    np.testing.assert_allclose(got["test/all/nll/unigram"], want, rtol=1e-9)
    assert got["test/all/perplexity/chance"] == ids["vocab"]


def test_cached_greedy_equals_full_forward_argmax(lm):
    import jax

    from vlm_jax.evals.language_model import continue_greedy

    obj, model, params = lm
    ids = obj.ids
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(x.dtype), params)  # less uniform
    prompts = obj.data.tokenize(obj.data.held_out()[:5])
    got = continue_greedy(model, params, prompts, 3, 12, ids)
    from steps import brute_force_greedy

    for row, prompt in enumerate(prompts):
        want = brute_force_greedy(lambda t: model.apply({"params": params}, t)[0][0, -1],
                                  [ids["bos"], *prompt[:3].tolist()], 12, ids)
        assert got[row].tolist() == want


def test_language_model_through_train(tmp_path, data_dir):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.scaling.flops import jaxpr_flops
    from vlm_jax.train.trainer import Setup, finalize_config, step_flops, train

    config = apply_overrides(finalize_config(load_config("experiments/text_lm.py:size=test,steps=12,batch=32")),
                             ["mesh=[('data', 1)]"])
    out = train(config, tmp_path / "run")
    ev = out["evals"]
    assert ev["lm/test/all/perplexity/model"] < ev["lm/test/all/perplexity/chance"]  # it learned something
    assert ev["lm/test/tokens"] > 512 * 2  # 512 held-out sentences (size=test), EOS included
    setup = Setup(config)
    assert step_flops(setup) == jaxpr_flops(setup.train_step.jaxpr(setup.abstract_state(), setup.abstract_batch()))
    with pytest.raises(ValueError, match="text_corpus"):
        Setup(apply_overrides(config, ["data.name=emoji"]))
