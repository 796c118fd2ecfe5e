"""make_shards: img2dataset layouts written from the emoji training data (checked by independent tarfile / pyarrow
reads) and `inspect`'s counts on deliberately corrupted shards."""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlm_jax.tools import make_shards

N, SHARD, ROW_GROUP = 200, 64, 16
# JPEG q95 (4:2:0) of the 64 px PNGs, per-image mean |difference| on 0–255: measured mean 3.2, max 6.8 over these 200
# (max 13.1 over all 5,020 training examples, a flag)
MAX_MEAN_ABS_DIFF, MAX_IMAGE_ABS_DIFF = 4.0, 8.0
META_COLUMNS = ["concept", "name", "style", "emoji", "is_flag", "caption", "url", "key", "status", "error_message",
                "width", "height", "original_width", "original_height", "exif", "sha256"]


@pytest.fixture(scope="module")
def source(data_dir: str) -> list[dict]:
    """The first N examples the default run trains on, in order."""
    from vlm_jax.data import pipeline

    rows = pipeline.train_source(data_dir, make_shards.TRAIN_STYLES, 64)
    return [rows[i] for i in range(N)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, data_dir: str) -> dict[str, Path]:
    """Both formats written through the CLI entry."""
    out = tmp_path_factory.mktemp("shards")
    for fmt in ("wds", "parquet"):
        make_shards.main(["--dataset", "emoji", "--format", fmt, "--out", str(out / fmt), "--shard_size", str(SHARD),
                          "--max_examples", str(N), "--row_group_size", str(ROW_GROUP), "--data_dir", data_dir])
    return {"wds": out / "wds", "parquet": out / "parquet"}


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def _check_images(jpgs: list[bytes], source: list[dict]) -> None:
    diffs = []
    for jpg, ex in zip(jpgs, source):
        assert Image.open(io.BytesIO(jpg)).format == "JPEG"
        a, b = _decode(jpg), _decode(ex["image"])
        assert a.shape == b.shape == (64, 64, 3)
        diffs.append(np.abs(a - b).mean())
    assert np.mean(diffs) < MAX_MEAN_ABS_DIFF and np.max(diffs) < MAX_IMAGE_ABS_DIFF, (np.mean(diffs), np.max(diffs))


def _stats(folder: Path, shard: int) -> dict:
    return json.loads((folder / f"{shard:05d}_stats.json").read_text())


def test_webdataset_layout(shards: dict[str, Path], source: list[dict]) -> None:
    folder, n_shards = shards["wds"], math.ceil(N / SHARD)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{s:05d}{suffix}" for s in range(n_shards) for suffix in (".tar", ".parquet", "_stats.json"))
    keys, jpgs, metas = [], [], []
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar") as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        count = min(SHARD, N - s * SHARD)
        assert len(members) == 3 * count
        for i in range(count):  # a sample's members are consecutive, sorted by extension as webdataset writes them
            (jpg_name, jpg), (json_name, meta), (txt_name, txt) = members[3 * i: 3 * i + 3]
            key = f"{s * 100 + i:07d}"  # img2dataset: 5 shard digits + ceil(log10(64)) = 2 index digits
            assert (jpg_name, json_name, txt_name) == (f"{key}.jpg", f"{key}.json", f"{key}.txt")
            meta = json.loads(meta)
            ex = source[s * SHARD + i]
            assert txt.decode("utf-8") == meta["caption"] == meta["name"] == ex["name"].decode()
            assert list(meta) == META_COLUMNS
            assert (meta["key"], meta["status"], meta["concept"], meta["style"]) == \
                (key, "success", ex["concept"], "noto")
            assert meta["width"] == meta["height"] == meta["original_width"] == meta["original_height"] == 64
            keys.append(key)
            jpgs.append(jpg)
            metas.append(meta)
        stats = _stats(folder, s)
        assert (stats["count"], stats["successes"], stats["failed_to_download"], stats["failed_to_resize"]) == \
            (count, count, 0, 0)
        table = pq.read_table(folder / f"{s:05d}.parquet")
        assert table.column_names == META_COLUMNS and table.num_rows == count
        assert table.to_pylist() == metas[-count:]
    assert len(set(keys)) == N
    _check_images(jpgs, source)


def test_parquet_layout(shards: dict[str, Path], source: list[dict]) -> None:
    folder, n_shards = shards["parquet"], math.ceil(N / SHARD)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{s:05d}{suffix}" for s in range(n_shards) for suffix in (".parquet", "_stats.json"))
    rows = []
    for s in range(n_shards):
        f = pq.ParquetFile(folder / f"{s:05d}.parquet")
        count = min(SHARD, N - s * SHARD)
        assert [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] == \
            [min(ROW_GROUP, count - g) for g in range(0, count, ROW_GROUP)]
        table = f.read()
        assert table.column_names == META_COLUMNS + ["jpg"] and table.schema.field("jpg").type == pa.binary()
        assert table.column("key").to_pylist() == [f"{s * 100 + i:07d}" for i in range(count)]
        assert _stats(folder, s)["successes"] == count
        rows += table.to_pylist()
    assert [r["caption"] for r in rows] == [ex["name"].decode() for ex in source]
    assert [r["concept"] for r in rows] == [ex["concept"] for ex in source]
    _check_images([r["jpg"] for r in rows], source)


def test_inspect_clean_cli(shards: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = subprocess.run([sys.executable, "-m", "vlm_jax.tools.make_shards", "inspect", str(shards["wds"]), "--json"],
                         check=True, capture_output=True, text=True).stdout
    total = json.loads(out)["total"]
    assert (total["shards"], total["samples"], total["members"], total["bad_members"], total["incomplete"],
            total["truncated_shards"]) == (4, N, 3 * N, 0, {}, [])
    assert total["mean_width"] == total["mean_height"] == 64
    make_shards.main(["inspect", f"{shards['parquet']}/{{00000..00001}}.parquet", "--json"])
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["shards"], total["samples"], total["members"], total["bad_members"]) == (2, 2 * SHARD, 2 * SHARD, 0)
    make_shards.main(["inspect", str(shards["parquet"])])
    assert "truncated shards: none" in capsys.readouterr().out


def _rewrite_tar(path: Path, edit) -> None:
    """Rewrites a tar with `edit(name, data)` → new bytes, or None to drop the member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = edit(name, data)
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _inspect_json(target: Path, capsys: pytest.CaptureFixture) -> dict:
    make_shards.main(["inspect", str(target), "--json"])
    return json.loads(capsys.readouterr().out)


def test_inspect_counts_corruption(shards: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = shutil.copytree(shards["wds"], tmp_path / "wds")
    bad = {"0000000.jpg": b"", "0000001.jpg": b"GIF89a, not an image", "0000100.txt": None,
           "0000101.txt": b"\xff\xfe not utf-8"}
    _rewrite_tar(folder / "00000.tar", lambda name, data: bad.get(name, data))
    _rewrite_tar(folder / "00001.tar", lambda name, data: bad.get(name, data))
    last = folder / "00003.tar"
    with tarfile.open(last) as tar:
        cut = tar.getmember("0000305.jpg")
    with open(last, "r+b") as f:  # cut in the middle of the 6th sample's image
        f.truncate(cut.offset_data + cut.size // 2)
    report = _inspect_json(folder, capsys)
    counts = [(s["samples"], s["keys"], s["members"], s["bad_members"], s["bad"], s["incomplete"], s["truncated"])
              for s in report["shards"]]
    assert counts == [(62, 64, 192, 2, {"empty": 1, "undecodable": 1}, {}, False),
                      (62, 64, 191, 1, {"not_utf8": 1}, {"no_caption": 1}, False),
                      (64, 64, 192, 0, {}, {}, False),
                      (5, 6, 15, 1, {"truncated": 1}, {"cut": 1}, True)]
    total = report["total"]
    assert (total["samples"], total["bad_members"], total["truncated_shards"]) == (193, 4, [str(last)])
    assert total["bad"] == {"empty": 1, "undecodable": 1, "not_utf8": 1, "truncated": 1}
    assert total["incomplete"] == {"no_caption": 1, "cut": 1}
    with open(last, "r+b") as f:  # cut exactly after a member: every member reads, the end-of-archive blocks are gone
        f.truncate(cut.offset)
    shard = _inspect_json(last, capsys)["shards"][0]
    assert (shard["samples"], shard["members"], shard["truncated"], shard["incomplete"]) == (5, 15, True, {})


def test_inspect_counts_parquet_corruption(shards: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    folder = shutil.copytree(shards["parquet"], tmp_path / "parquet")
    rows = pq.read_table(folder / "00000.parquet").to_pylist()
    rows[0]["jpg"], rows[1]["jpg"], rows[2]["jpg"], rows[3]["caption"] = None, b"", b"junk", None
    rows[4].update(status="failed_to_download", jpg=None)  # img2dataset keeps failed rows without an image
    schema = pq.read_schema(folder / "00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema), folder / "00000.parquet", row_group_size=ROW_GROUP)
    last = folder / "00003.parquet"
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size // 2)
    report = _inspect_json(folder, capsys)
    first, tail = report["shards"][0], report["shards"][3]
    assert (first["samples"], first["keys"], first["bad"], first["incomplete"]) == \
        (59, 64, {"empty": 1, "undecodable": 1}, {"no_image": 1, "no_caption": 1, "failed": 1})
    assert (tail["samples"], tail["truncated"]) == (0, True)
    assert report["total"]["samples"] == 59 + 2 * SHARD
