"""Multi-task data: long prompts keep the text to work on, truncations are counted in the stream, and a dataset
built for an existing run (vlm_jax.load) reads what is there instead of fetching or building it."""
import json
import os
import re
import unicodedata
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from vlm_jax.data import image_text, robust

PROMPT_LEN, TEXT_LEN = 8, 6  # short enough that many translate prompts and targets are cut


@pytest.fixture(scope="module")
def data(data_dir):
    return image_text.get(ml_collections.ConfigDict(dict(
        name="multitask", tasks=dict(translate_de=1.0), prompt_len=PROMPT_LEN, text_len=TEXT_LEN, num_threads=0)))


def _norm(text):
    """The tokenizer's normalisation (nmt_nfkc_cf) as decoding gives it back: NFKC, lower case, single spaces."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def _pieces(data, texts):
    """SentencePiece lengths without EOS, straight from the model (no truncation)."""
    return np.array([len(ids) for ids in data.tokenizer.sp.encode(list(texts))])


def test_long_prompts_keep_the_text_to_translate(data):
    prompts = [e.prompt for e in data.examples["translate_de"]]
    payloads = [p.split(": ", 1)[1] for p in prompts]
    decoded = data.tokenizer.decode(data.tokenize_prompt(prompts))
    cut = _pieces(data, prompts) > PROMPT_LEN - 1  # EOS takes the last position
    fits = _pieces(data, payloads) <= PROMPT_LEN - 3
    assert (cut & fits).sum() > 100 and (~cut).sum() > 10
    lost = [(p, d) for p, d, c, f in zip(payloads, decoded, cut, fits) if c and f and not d.endswith(_norm(p))]
    assert lost == []  # the instruction is cut, not the payload
    assert all(d == _norm(p) for p, d, c in zip(prompts, decoded, cut) if not c)
    ids, truncated = data.tokenize_prompt_checked(prompts)  # for api.caption's warning
    np.testing.assert_array_equal(ids, data.tokenize_prompt(prompts))
    np.testing.assert_array_equal(truncated, cut)


def test_truncations_are_counted_in_the_stream(data):
    """One epoch of the one-task mixture meets every example once: the counters equal the count over them."""
    examples = data.examples["translate_de"]
    n = len(examples)
    batch = max(b for b in range(1, 513) if n % b == 0)
    it = iter(data.train(batch, seed=0, process_index=0, process_count=1))
    stats = {}
    for _ in range(n // batch):
        stats = robust.pop_counts(dict(next(it)))
    want_prompt = int((_pieces(data, [e.prompt for e in examples]) > PROMPT_LEN - 1).sum())
    want_text = int((_pieces(data, [e.target for e in examples]) > TEXT_LEN - 1).sum())
    assert want_prompt > 0 and want_text > 0
    assert stats["data/truncated/prompt"] == want_prompt and stats["data/truncated/text"] == want_text
    assert stats["data/skipped/image"] == 0


def test_synthetic_prompts_keep_their_end_too():
    """The random stand-in data cuts prompts like multitask does (api.caption warns through the same method)."""
    data = image_text.get(ml_collections.ConfigDict(dict(name="synthetic", prompt_len=5, vocab_size=300)))
    ids, cut = data.tokenize_prompt_checked(["ab", "abcdefgh"])
    folded = lambda text: [3 + b % 297 for b in text.encode()]  # noqa: E731  (the documented byte folding)
    assert cut.tolist() == [False, True]
    assert ids.tolist() == [folded("ab") + [2, 0, 0], folded("efgh") + [2]]
    np.testing.assert_array_equal(data.tokenize_prompt(["abcdefgh"]), ids[1:])


def _stub_tools(tmp_path, monkeypatch) -> Path:
    """apt-get / npm / dpkg-deb on PATH that log their call and fail: the log shows whether anything ran."""
    log, stub = tmp_path / "called.log", tmp_path / "bin"
    stub.mkdir()
    for tool in ("apt-get", "npm", "dpkg-deb"):
        (stub / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\nexit 100\n")
        (stub / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    return log


def _emoji_only(tmp_path, data_dir) -> Path:
    """A data folder holding the prepared emoji (linked) and no Tux Paint data."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "vlm_emoji").symlink_to(os.path.abspath(os.path.join(data_dir, "vlm_emoji")))
    return d


def test_read_only_datasets_read_what_exists_and_build_nothing(data, tmp_path, monkeypatch, data_dir):
    from vlm_jax.data import base

    log = _stub_tools(tmp_path, monkeypatch)
    empty = _emoji_only(tmp_path, data_dir)
    tokenizers = sorted((Path(data.data_dir) / "multitask").iterdir())
    with base.read_only():
        assert str(data._tokenizer(data.DEFAULTS["tokenizer_vocab"])) == data.tokenizer.model_path  # exists: read
        tux = image_text.get(ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=data_dir, num_threads=0)))
        assert tux.tokenize(["a ball."]).shape == (1, 32)
        with pytest.raises(FileNotFoundError, match=r"vlm_tuxpaint.*not prepared.*" + re.escape(str(empty))):
            image_text.get(ml_collections.ConfigDict(dict(name="multitask", tasks=dict(translate_de=1.0),
                                                          data_dir=str(empty))))
        with pytest.raises(FileNotFoundError, match="multitask tokenizer"):  # never trained for a loaded run
            data._tokenizer(999)
    assert not log.exists()
    assert sorted(p.name for p in empty.iterdir()) == ["vlm_emoji"]  # nothing fetched, unpacked or built
    assert sorted((Path(data.data_dir) / "multitask").iterdir()) == tokenizers


def test_loading_a_multitask_run_runs_no_apt_get(tmp_path, monkeypatch, data_dir):
    import vlm_jax
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config

    log = _stub_tools(tmp_path, monkeypatch)
    empty = _emoji_only(tmp_path, data_dir)
    config = apply_overrides(finalize_config(load_config("experiments/multitask_pali.py:size=test")),
                             [f"data.data_dir={empty}"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort())))
    with pytest.raises(Exception, match="vlm_tuxpaint.*not prepared"):
        vlm_jax.load(run)
    assert not log.exists(), log.read_text()
