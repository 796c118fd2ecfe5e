"""Issue 32's bridges into a frozen language model, through train(): a language-model run is the source, the
bridge run loads its decoder (`init_from`) and freezes it (`optim.freeze`). The LM's parameters come out
bit-identical, and the compiled step holds no weight-gradient matmul for them (counted against the same step with
nothing frozen); the mapper's prefix has the configured shape and is what the logits depend on."""
from __future__ import annotations

import re

import flax.traverse_util as traverse
import jax
import numpy as np
import pytest

ONE = "mesh=[('data', 1)]"


@pytest.fixture(scope="module")
def lm_run(data_dir, tmp_path_factory):
    """A tiny LM trained through train() (3 steps), and its workdir."""
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config("experiments/text_lm.py:size=test,steps=3,batch=16")),
                             [ONE, "progress=False", "data.eval_sentences=64", "evals.samples=1"])
    workdir = tmp_path_factory.mktemp("lm")
    out = train(config, workdir)
    return workdir, traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")


def _bridge_config(workdir, *overrides):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config

    c = finalize_config(load_config(f"experiments/emoji_frozen_lm.py:lm={workdir},size=test,steps=3,batch=16"))
    return apply_overrides(c, [ONE, "progress=False", "evals.sets=[]", "checkpoint.every_steps=0",
                               "checkpoint.async_save=False", *overrides])


def _dots(hlo: str) -> int:
    """Matmul instructions in an optimised HLO module (fused computations included)."""
    return len(re.findall(r"= [a-z0-9\[\]{},:]+ dot\(", hlo))


def test_frozen_lm_is_bit_identical_and_gets_no_weight_gradient(lm_run, tmp_path):
    from vlm_jax.train.trainer import Setup, train

    lm_dir, lm_params = lm_run
    config = _bridge_config(lm_dir)
    out = train(config, tmp_path / "bridge")
    params = traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")
    lm_paths = sorted(p for p in lm_params)  # the LM run's parameters, all under decoder/
    assert lm_paths and all(p.startswith("decoder/") for p in lm_paths)
    for path in lm_paths:
        np.testing.assert_array_equal(params[path], lm_params[path], err_msg=path)
    fresh = traverse.flatten_dict(jax.device_get(out["setup"].init_state(jax.random.key(config.seed)).params),
                                  sep="/")
    for path in params:
        if not path.startswith("decoder/"):  # everything else trained: ViT, mapper
            assert not np.array_equal(params[path], fresh[path]), path
    # the compiled step: each LM kernel's weight-gradient matmul is gone, nothing else changed
    kernels = [p for p in lm_paths if p.endswith("kernel")]
    frozen_hlo = out["setup"].train_step.compiled().as_text()
    free = Setup(_bridge_config(lm_dir, "optim.freeze=''"))
    free_hlo = free.train_step.compile(free.abstract_state(), free.abstract_batch()).as_text()
    assert _dots(free_hlo) - _dots(frozen_hlo) == len(kernels), (len(kernels), _dots(free_hlo), _dots(frozen_hlo))
    # the logged gradient norm is the trainable parameters' alone
    assert out["setup"].objective.frozen is not None and free.objective.frozen is None


@pytest.mark.parametrize("kind,expect", [("linear", 2), ("mlp", 4), ("transformer", 3), ("tokens", 16)])
def test_prefix_shapes_and_the_logits_depend_on_the_image(kind, expect, lm_run):
    from vlm_jax.config import apply_overrides
    from vlm_jax.train.objective import get_objective

    prefix = {"linear": 2, "mlp": 4, "transformer": 3}.get(kind, 4)
    obj = get_objective(apply_overrides(_bridge_config(lm_run[0]), [f"model.mapper.kind={kind}",
                                                                     f"model.mapper.prefix_len={prefix}"]))
    model = obj.model()
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    text = np.asarray(obj.data.tokenize(["a cat", "a cat"]))
    params = model.init(jax.random.key(1), image, obj.decoder_inputs(text))["params"]
    context, _ = model.apply({"params": params}, image, method="encode")
    assert context["image"].shape == (2, expect, 32)  # 4×4 patches of 8 px for the tokens mapper
    (_, _, logits), _ = model.apply({"params": params}, image, obj.decoder_inputs(text))
    assert logits.shape == (2, text.shape[1], obj.ids["vocab"])
    assert not np.allclose(logits[0], logits[1], atol=1e-6)  # same caption, different images
