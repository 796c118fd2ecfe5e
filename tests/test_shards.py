"""Training from shards: every sample read once per epoch across 2 and 3 processes, bad members / truncated tars /
missing shards skipped and counted per source through the trainer's pipeline, a source of only bad data stopped by
name, remote shards over HTTP with retries, decode-time crops against a full decode, grain workers resumed exactly,
and a CLI run killed and resumed logging the same losses as an uninterrupted one."""
import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import robust
from vlm_jax.data.shards import config as shard_config
from vlm_jax.data.shards.stream import SourceStream, decode_crop
from vlm_jax.data.shards.order import EpochOrder
from steps import cli_env

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(value: int, w: int = 24, h: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value % 256, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]], cut_in: int | None = None,
               stats: int | None = None) -> None:
    """A tar of samples (members jpg, json, txt as webdataset writes them); `cut_in`: the file is cut in the
    middle of that sample's image; `stats`: an img2dataset _stats.json claiming that many successes."""
    cut_at = None
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, (key, members) in enumerate(samples):
            for ext in sorted(members):
                if n == cut_in and ext == "jpg":
                    cut_at = tar.fileobj.tell() + 512 + len(members[ext]) // 2
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tar.addfile(info, io.BytesIO(members[ext]))
    if cut_at is not None:
        os.truncate(path, cut_at)
    if stats is not None:
        path.with_name(path.stem + "_stats.json").write_text(json.dumps({"count": stats, "successes": stats}))


def _sample(concept: int, **override: bytes) -> tuple[str, dict[str, bytes]]:
    members = {"jpg": _jpeg(concept), "txt": f"thing {concept}".encode(), "json": json.dumps({"concept": concept}).encode()}
    members.update(override)
    return f"{concept:09d}", {k: v for k, v in members.items() if v is not None}


# messy/: what each bad case costs one epoch (30 listed samples), written down by hand
MESSY_BAD = {"image": 2, "caption": 2, "member": 3, "shard": 10}
MESSY_GOOD = {1000, 1005, 1006, 1007, 1008, 1009} | set(range(1100, 1107))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    (root / "good").mkdir()
    for s in range(3):  # 30 good samples, concepts 100 s + i
        _write_tar(root / "good" / f"{s:05d}.tar", [_sample(100 * s + i) for i in range(10)], stats=10)
    (root / "messy").mkdir()
    first = [_sample(1000 + i) for i in range(10)]
    first[1] = _sample(1001, jpg=b"")  # zero-byte image
    first[2] = _sample(1002, jpg=b"GIF89a not an image")  # undecodable
    first[3] = _sample(1003, txt=None)  # no caption member
    first[4] = _sample(1004, txt=b"\xff\xfe caption")  # not UTF-8
    _write_tar(root / "messy" / "00000.tar", first, stats=10)
    _write_tar(root / "messy" / "00001.tar", [_sample(1100 + i) for i in range(10)], cut_in=7, stats=10)
    (root / "messy" / "00002_stats.json").write_text(json.dumps({"successes": 10}))  # its tar is missing
    (root / "broken").mkdir()
    _write_tar(root / "broken" / "00000.tar", [_sample(5000 + i, jpg=b"") for i in range(1100)])
    return root


@pytest.fixture(scope="module")
def tok(data_dir):
    from vlm_jax.data import emoji_tfds
    from vlm_jax.data.tokenizer import Tokenizer

    return Tokenizer(emoji_tfds.tokenizer_path(data_dir, 64, None))


def _section(**kw) -> dict:
    return shard_config.section(ml_collections.ConfigDict({"shards": kw}))


def _stream(tok, cfg: dict, batch: int, p: int = 0, count: int = 1, seed: int = 0, augment=None):
    pre = shard_config.WebPreprocess(lambda t: tok.encode(t, 8), 16, augment or {"crop": {"scale": (0.5, 1)}},
                                     ["{}"], fields=("concept",), max_pixels=1 << 20)
    return shard_config.train_stream(cfg, "/nonexistent", pre, batch_size=batch, seed=seed, process_index=p,
                                     process_count=count, num_threads=0)


def _epoch_reasons(reader, tok) -> dict[str, int]:
    """Why each of one epoch's samples is rejected (read and prepared position by position), counted."""
    stream = SourceStream(reader, EpochOrder(reader.sizes, 0, chunk=1, window=1))
    pre = shard_config.WebPreprocess(lambda t: tok.encode(t, 8), 16, {}, ["{}"], ("concept",), 1 << 20)
    reasons: dict[str, int] = {}
    for n in range(int(reader.sizes.sum())):
        r = pre.random_map(stream[n], np.random.default_rng(n)).get(robust.BAD)
        if r:
            reasons[r] = reasons.get(r, 0) + 1
    return reasons


@pytest.mark.parametrize("count", [2, 3])
def test_processes_partition_each_epoch(shard_dir, tok, count):
    """2 or 3 processes: the first epoch of each (15 or 10 samples) together hold every sample exactly once;
    whole-shard chunks, one per window: each process reads its shards one at a time."""
    cfg = _section(urls=str(shard_dir / "good" / "{00000..00002}.tar"), fields=("concept",), window=1)
    per = 30 // count
    seen = []
    for p in range(count):
        it = iter(_stream(tok, cfg, batch=5, p=p, count=count))
        got = np.concatenate([next(it)["concept"] for _ in range(per // 5)]).tolist()
        assert len(set(got)) == per
        seen += got
    assert sorted(seen) == [100 * s + i for s in range(3) for i in range(10)]
    order = EpochOrder([10, 10, 10], seed=0, chunk=0, window=1)
    assert len({order(n)[0] for n in range(10)}) == 1  # the first 10 positions: one shard


def test_global_shuffle_order_is_a_permutation_per_epoch():
    order = EpochOrder([7, 3, 11], seed=3, chunk=1, window=1)
    for epoch in range(2):
        got = [order(epoch * 21 + n) for n in range(21)]
        assert sorted(got) == sorted((s, i) for s, n in enumerate([7, 3, 11]) for i in range(n))
    assert [order(n) for n in range(21)] != [order(21 + n) for n in range(21)]  # reshuffled each epoch


def test_bad_members_truncated_tars_and_missing_shards_are_counted(shard_dir, tok):
    """One epoch of the messy source read position by position gives exactly the hand-counted reasons; through
    the trainer's pipeline the kept samples of an epoch are exactly the good ones, the counters (per source and
    in total) cover the epoch, and they resume from the iterator state."""
    cfg = _section(urls=str(shard_dir / "messy" / "{00000..00002}.tar"), fields=("concept",), window=1)
    reader = shard_config.readers(cfg, "/nonexistent")[0]
    assert reader.name == "messy" and reader.sizes.tolist() == [10, 10, 10]
    assert _epoch_reasons(reader, tok) == MESSY_BAD
    it = iter(_stream(tok, cfg, batch=13))
    batch = next(it)
    counts = robust.pop_counts(dict(batch))
    assert set(batch["concept"].tolist()) == MESSY_GOOD
    for reason, n in MESSY_BAD.items():
        assert counts[f"data/skipped/messy/{reason}"] == counts[f"data/skipped/{reason}"] <= n
    batch2 = next(it)
    counts2 = robust.pop_counts(dict(batch2))
    for reason, n in MESSY_BAD.items():  # two epochs' good samples read: at least one epoch's bad ones counted
        assert n <= counts2[f"data/skipped/messy/{reason}"] <= 2 * n
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    again = iter(_stream(tok, cfg, batch=13))
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(2)]):
        assert robust.pop_counts(dict(a)) == robust.pop_counts(dict(b))
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["concept"], b["concept"])


def test_a_source_of_only_bad_data_stops_the_run_naming_it(shard_dir, tok):
    cfg = _section(urls=[str(shard_dir / "good"), str(shard_dir / "broken")], fields=("concept",))
    it = iter(_stream(tok, cfg, batch=4))
    with pytest.raises(robust.TooManyBadExamples, match="source 'broken'"):
        for _ in range(2000):
            next(it)


class _Flaky(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the first two requests for a *01.tar answer 503; anything under /stall/ stalls."""

    failures: dict[str, int] = {}

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/stall/"):  # accepts the connection, never answers in time
            time.sleep(3)
            return
        if self.path.endswith("01.tar") and self.failures.get(self.path, 0) < 2:
            self.failures[self.path] = self.failures.get(self.path, 0) + 1
            self.send_error(503)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(shard_dir):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Flaky, directory=str(shard_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_shards_over_http_retry_and_skip_what_is_missing(shard_dir, server, tok, tmp_path):
    """Through a server on 127.0.0.1: a shard that fails twice is fetched on the third try, a missing one is
    skipped and counted, the epoch holds every readable sample, and downloads land in the cache."""
    cfg = _section(urls=f"{server}/good/{{00000..00002}}.tar", fields=("concept",), backoff=0.01,
                   cache_dir=str(tmp_path / "cache"))
    it = iter(_stream(tok, cfg, batch=10))
    got = np.concatenate([next(it)["concept"] for _ in range(3)]).tolist()
    assert sorted(got) == [100 * s + i for s in range(3) for i in range(10)]
    assert _Flaky.failures == {"/good/00001.tar": 2}
    assert len(list((tmp_path / "cache").glob("*.tar"))) == 3
    messy = _section(urls=f"{server}/messy/{{00000..00002}}.tar", fields=("concept",), backoff=0.01, retries=2,
                     cache_dir=str(tmp_path / "cache"))
    reader = shard_config.readers(messy, "/nonexistent")[0]
    assert _epoch_reasons(reader, tok) == MESSY_BAD
    assert f"{server}/messy/00002.tar" in reader.unavailable


def test_decode_time_crop_matches_a_full_decode():
    """A 640×480 JPEG cropped and resized to 64 px at decode time (DCT-scaled) is within a few grey levels of
    cropping the fully decoded image; oversized images are refused from the header."""
    yy, xx = np.mgrid[0:480, 0:640]
    img = np.stack([(xx * 255 / 639), (yy * 255 / 479), ((xx + yy) % 64) * 4], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    crop = {"scale": (0.3, 0.3), "ratio": (1.0, 1.0)}
    got, _ = decode_crop(data, np.random.default_rng(0), crop, 64, 1 << 24)
    from vlm_jax.data import augment
    p = augment.draw(np.random.default_rng(0), {"crop": crop}, (480, 640))
    x0, y0, w, h = (p[augment.P[k]] for k in ("x0", "y0", "w", "h"))
    full = Image.open(io.BytesIO(data)).convert("RGB")
    want = np.asarray(full.resize((64, 64), Image.Resampling.BICUBIC, box=(x0, y0, x0 + w, y0 + h)))
    assert got.shape == (64, 64, 3)
    assert np.abs(got.astype(float) - want).mean() < 3.0
    assert decode_crop(data, np.random.default_rng(0), crop, 64, 640 * 480 - 1) == (None, "image_size")


def test_worker_processes_resume_exactly_and_add_up_their_counts(shard_dir, tok):
    cfg = _section(urls=[str(shard_dir / "good"), str(shard_dir / "messy")], fields=("concept",), worker_count=2)
    it = iter(_stream(tok, cfg, batch=4))
    per_worker: dict = {}
    for _ in range(6):
        counts = robust.pop_counts(dict(next(it)), per_worker)
    assert set(per_worker) == {0, 1}
    assert counts["data/skipped/image"] == sum(w["data/skipped/image"] for w in per_worker.values())
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    again = iter(_stream(tok, cfg, batch=4))
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(3)]):
        np.testing.assert_array_equal(a["concept"], b["concept"])
        np.testing.assert_array_equal(a["image"], b["image"])


def _train_losses(workdir: Path) -> dict[int, float]:
    """The last logged loss of each step (a resumed run re-logs the steps after its checkpoint)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return {r["step"]: r["loss"] for r in rows if r.get("split") == "train"}


def test_cli_run_from_shards_killed_and_resumed_logs_the_same_losses(tmp_path, data_dir):
    """make_shards writes the emoji training data as shards; `python -m vlm_jax.main` trains from them with two
    grain worker processes, is SIGKILLed at a random step (mid-epoch, between checkpoints), resumes, and logs
    bit-identical losses to an uninterrupted run."""
    import random

    from vlm_jax.tools import make_shards

    out = tmp_path / "shards"
    make_shards.main(["--dataset", "emoji", "--format", "wds", "--out", str(out), "--shard_size", "500",
                      "--max_examples", "1500", "--data_dir", data_dir])
    spec = f"experiments/emoji_two_tower.py:size=test,steps=12,shards={out},workers=2"
    overrides = ["--config.mesh=[('data', 1)]", "--config.batch_size=32", "--config.log_every=1",
                 "--config.checkpoint.every_steps=3", "--config.evals.sets=[]", "--config.optim.warmup_steps=2",
                 f"--config.data.data_dir={data_dir}"]
    env = cli_env(tmp_path / "jit_cache")

    def cmd(workdir):
        return [sys.executable, "-m", "vlm_jax.main", "--config", spec, "--workdir", str(workdir), *overrides]

    full = subprocess.run(cmd(tmp_path / "full"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-2000:]
    rng = random.Random()
    for kill_at in (rng.randint(4, 10),):  # checkpoints at 3, 6, 9
        proc = subprocess.Popen(cmd(tmp_path / "killed"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while max(_train_losses(tmp_path / "killed"), default=0) < kill_at:
            assert proc.poll() is None and time.time() < deadline, f"ended before step {kill_at}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    again = subprocess.run(cmd(tmp_path / "killed"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    want, got = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "killed")
    assert sorted(want) == list(range(1, 13)) and all(got[s] == want[s] for s in want), (want, got)


def test_every_shards_config_key_is_read(tmp_path, data_dir, shard_dir):
    import jax

    from vlm_jax.config import load_config
    from vlm_jax.config_audit import leaf_keys, recording
    from vlm_jax.train.trainer import Setup, finalize_config

    spec = str(ROOT / "experiments" / f"emoji_two_tower.py:size=test,shards={shard_dir / 'good'},workers=0")
    raw = load_config(spec)
    keys = [k for k in leaf_keys(raw, ("data",)) if "shards" in k]
    config = finalize_config(load_config(spec))
    with config.unlocked():
        config.mesh = [("data", 1)]
        config.data.data_dir = data_dir
    with recording(config) as recorder:
        setup = Setup(config, jax.devices()[:1])
        setup.objective.train_data(8, 0, 0, 1)
    assert keys and [k for k in keys if not recorder.is_read(k)] == []


def test_shards_dataset_trains_its_tokenizer_once_and_has_no_eval_sets(shard_dir, tmp_path):
    from vlm_jax.data import base

    cfg = ml_collections.ConfigDict(dict(name="shards", data_dir=str(tmp_path), image_size=16, text_len=16,
                                         vocab_size=300, shards=dict(urls=str(shard_dir / "good"))))
    ds = base.get(cfg)
    models = list((tmp_path / "shard_tokenizers").glob("*.model"))
    assert len(models) == 1
    ids = ds.tokenize(["thing 105"])
    assert ids.shape == (1, 16) and ds.tokenizer.decode(ids) == ["thing 105"]
    batch = next(iter(ds.train(4, 0, 0, 1)))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["text"].shape == (4, 16)
    assert batch["image"].dtype == np.uint8  # normalised in the train step (test_augment checks the mapping)
    assert base.get(cfg).tokenizer.vocab_size == ds.vocab_size  # reused, not retrained
    with pytest.raises(ValueError, match="evals.suite"):
        ds.evaluators(None, ml_collections.ConfigDict(dict(sets=["emoji"])))
    with pytest.raises(ValueError, match="data.shards.urls"):
        base.get(ml_collections.ConfigDict(dict(name="shards", data_dir=str(tmp_path))))


@pytest.mark.parametrize("nproc", [2, 3])
def test_jax_distributed_processes_partition_the_stream(shard_dir, tmp_path, nproc):
    """Real jax.distributed processes on 127.0.0.1, each calling the dataset as the trainer does: their first
    epochs hold every sample key (concept) exactly once."""
    import portpicker

    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    urls = str(shard_dir / "good" / "{00000..00002}.tar")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "shards_worker.py"), str(i), str(nproc),
                               str(port), urls, str(tmp_path), str(tmp_path / f"p{i}.npy")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [log[-2000:] for log in logs]
    parts = [np.load(tmp_path / f"p{i}.npy").tolist() for i in range(nproc)]
    assert all(len(p) == 30 // nproc for p in parts)
    assert sorted(sum(parts, [])) == [100 * s + i for s in range(3) for i in range(10)]


def test_parquet_shards_epoch_holds_every_row(tmp_path, data_dir, tok):
    """make_shards' parquet output (img2dataset's columns, small row groups): one epoch through the training stream
    holds exactly the rows' concepts (read back with pyarrow), with the default caption column."""
    import pyarrow.parquet as pq

    from vlm_jax.tools import make_shards

    out = tmp_path / "pq"
    make_shards.main(["--dataset", "emoji", "--format", "parquet", "--out", str(out), "--shard_size", "64",
                      "--row_group_size", "16", "--max_examples", "200", "--data_dir", data_dir])
    want = sorted(c for f in sorted(out.glob("*.parquet")) for c in pq.read_table(f, columns=["concept"])
                  .column("concept").to_pylist())
    cfg = _section(urls=str(out), fields=("concept",), chunk=16, window=4)
    it = iter(_stream(tok, cfg, batch=20))
    got = sorted(np.concatenate([next(it)["concept"] for _ in range(10)]).tolist())
    assert len(want) == 200 and got == want


def test_shard_lists_from_braces_globs_folders_and_lists(shard_dir):
    from vlm_jax.data.shards import urls

    assert urls.expand_braces("s/{008..011}.tar") == ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]
    assert urls.expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    good = [str(shard_dir / "good" / f"{s:05d}.tar") for s in range(3)]
    assert urls.expand(str(shard_dir / "good")) == good
    assert urls.expand(str(shard_dir / "good" / "*.tar")) == good
    assert urls.expand(f"{good[0]} {good[1]}::{good[2]}") == good
    assert urls.expand("https://host/x/{00..01}.tar") == ["https://host/x/00.tar", "https://host/x/01.tar"]
    with pytest.raises(ValueError, match="matches no files"):
        urls.expand(str(shard_dir / "nothing" / "*.tar"))
    with pytest.raises(ValueError, match="compressed tar"):
        urls.shard_format("x/0.tar.gz")


def test_a_stalled_server_is_a_skipped_shard_not_a_hang(server, tok, tmp_path):
    """A server that accepts and never answers: after the timeout and retries the shard is skipped and named,
    and training reads the rest."""
    cfg = _section(urls=f"{server}/good/00000.tar {server}/stall/00000.tar", fields=("concept",), timeout=0.3,
                   retries=2, backoff=0.01, cache_dir=str(tmp_path / "cache"))
    start = time.time()
    reader = shard_config.readers(cfg, "/nonexistent")[0]
    assert reader.sizes.tolist() == [10, 0] and f"{server}/stall/00000.tar" in reader.unavailable
    it = iter(_stream(tok, cfg, batch=10))
    assert sorted(next(it)["concept"].tolist()) == list(range(10))
    assert time.time() - start < 20


def test_bad_parquet_rows_and_a_broken_parquet_file_are_counted(tmp_path, tok):
    """Parquet: null, empty and undecodable images and null captions skipped by reason; a file whose footer is
    cut counts its (stats-promised) rows as a lost shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [_jpeg(i) for i in range(6)] + [None, b"", b"junk", _jpeg(9)]
    captions = [f"thing {i}" for i in range(9)] + [None]
    table = pa.table({"jpg": pa.array(images, pa.binary()), "caption": pa.array(captions, pa.string()),
                      "concept": pa.array(list(range(10)), pa.int64())})
    pq.write_table(table, tmp_path / "00000.parquet", row_group_size=4)
    pq.write_table(table, tmp_path / "00001.parquet")
    data = (tmp_path / "00001.parquet").read_bytes()
    (tmp_path / "00001.parquet").write_bytes(data[:len(data) // 2])
    (tmp_path / "00001_stats.json").write_text(json.dumps({"successes": 10}))
    cfg = _section(urls=str(tmp_path / "{00000..00001}.parquet"), fields=("concept",))
    reader = shard_config.readers(cfg, "/nonexistent")[0]
    assert _epoch_reasons(reader, tok) == {"image": 3, "caption": 1, "shard": 10}
    it = iter(_stream(tok, cfg, batch=6))
    assert sorted(next(it)["concept"].tolist()) == list(range(6))
