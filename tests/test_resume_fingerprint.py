"""Resume safety decided from what a config produces: a key that changes the train state's shapes (here SigLIP 2's
`loss.box_bins`, the decoder's vocabulary) or the tokenizer's ids is refused even with --allow_config_change, with
an error naming the key; no hand-kept list of keys decides it."""
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train import resume
from vlm_jax.train.resume import ConfigMismatchError
from vlm_jax.train.trainer import finalize_config, train


def _config(*more):
    c = finalize_config(load_config("experiments/emoji_siglip2.py:size=test,steps=4"))
    return apply_overrides(c, ["mesh=[('data', 1)]", "batch_size=8", "evals.sets=[]", "evals.probe_sets=[]",
                               "evals.locca_sets=[]", "checkpoint.every_steps=2", "checkpoint.async_save=False",
                               "progress=False", *more])


def test_a_key_that_changes_the_state_shapes_is_refused_even_when_allowed(tmp_path, data_dir):
    train(_config(), tmp_path, stop_after=2)
    with pytest.raises(ConfigMismatchError, match=r"(?s)train state \(\d+ leaves differ.*decoder.*"
                                                  r"loss\.box_bins: 32 → 16"):
        train(_config("loss.box_bins=16"), tmp_path, allow_config_change=True)


def test_a_changed_tokenizer_is_refused_and_an_unchanged_one_resumes():
    """Fingerprints of two tokenizers that differ on one probe text: structural; the same one twice: not."""
    def tokenize(texts, shift=0):
        ids = np.array([[len(t) % 97, sum(map(ord, t)) % 1000] for t in texts], np.int32)
        ids[2] += shift  # "flag: Norway" only
        return ids

    signature = {"params['w']": "float32[3]"}
    a = resume.fingerprint(signature, resume.tokenizer_fingerprint(tokenize))
    b = resume.fingerprint(signature, resume.tokenizer_fingerprint(lambda t: tokenize(t, 1)))
    assert resume.check_resume('{"data": {"v": 1}}', '{"data": {"v": 1}}', 4, False, a, dict(a)) == {}
    with pytest.raises(ConfigMismatchError, match=r"tokenizer \(the same texts give other token ids\).*data\.v"):
        resume.check_resume('{"data": {"v": 1}}', '{"data": {"v": 2}}', 4, True, a, b)
