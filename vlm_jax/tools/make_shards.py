"""Writes an embedded dataset as img2dataset shards (webdataset tars or parquet) and inspects shard folders.

  python -m vlm_jax.tools.make_shards --dataset emoji --format wds --out shards/emoji --shard_size 1000
  python -m vlm_jax.tools.make_shards --dataset tuxpaint --format parquet --out shards/tux --image_size 224
  python -m vlm_jax.tools.make_shards inspect shards/emoji [--json]
  python -m vlm_jax.tools.make_shards inspect 'shards/emoji/{00000..00003}.tar'

The layouts are img2dataset's (--output_format webdataset / parquet, see docs/shards.md); `inspect` reads shards
with tarfile / pyarrow / PIL only, as a check independent of the training reader.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

TRAIN_STYLES = ("noto", "twitter", "facebook")  # data.train_styles of experiments/emoji_two_tower.py
SHARD_DIGITS = 5  # img2dataset oom_shard_count
ROW_GROUP_SIZE = 100  # img2dataset's BufferedParquetWriter writes a row group every 100 rows
TAR_MTIME = 0  # fixed member mtime: the same data gives byte-identical tars (webdataset writes the time of writing)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
META_FIELDS = [("caption", pa.string()), ("url", pa.string()), ("key", pa.string()), ("status", pa.string()),
               ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
               ("original_width", pa.int32()), ("original_height", pa.int32()), ("exif", pa.string()),
               ("sha256", pa.string())]  # img2dataset's columns after the saved input columns (exif, sha256 by default)
SHARD_FILE = re.compile(r"^\d+(\.tar|\.parquet|_stats\.json)$")


@dataclasses.dataclass
class Sample:
    """A source example: encoded image, caption, source address and the dataset's own fields."""

    image: bytes
    caption: str
    url: str
    extra: dict[str, Any]


def _text(value: Any) -> str:
    """TFDS text (bytes) → str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def emoji_samples(data_dir: str, styles: Sequence[str] = TRAIN_STYLES) -> Iterator[Sample]:
    """The emoji training examples (`pipeline.train_source`: each style's seen concepts) in source order."""
    from vlm_jax.data import emoji_tfds, pipeline
    from vlm_jax.data.image_text import PREPARED_SIZE

    emoji_tfds.prepare(data_dir, image_size=PREPARED_SIZE)
    rows = pipeline.train_source(data_dir, styles, PREPARED_SIZE)
    for style, (src, indices) in zip(styles, rows.parts):
        split = "train" if style == "noto" else style
        for i in indices:
            ex = src[int(i)]
            name = _text(ex["name"])
            yield Sample(ex["image"], name, f"tfds://vlm_emoji/s{PREPARED_SIZE}/{split}/{int(i)}",
                         dict(concept=int(ex["concept"]), name=name, style=style, emoji=_text(ex["emoji"]),
                              is_flag=bool(ex["is_flag"])))


def tuxpaint_samples(data_dir: str, styles: Sequence[str] = ()) -> Iterator[Sample]:
    """The Tux Paint training stamps in source order, with the concept ids training uses."""
    from vlm_jax.data.tuxpaint import stamps
    from vlm_jax.data.tuxpaint.build import PREPARED_SIZE, data_source, prepare

    prepare(data_dir, PREPARED_SIZE)
    src = data_source(data_dir, "train", PREPARED_SIZE, encoded_images=True)
    rows = src.__getitems__(list(range(len(src))))
    concepts = stamps.concept_ids([int(r["id"]) for r in rows], [_text(r["caption"]) for r in rows])
    for i, r in enumerate(rows):
        caption, stamp = _text(r["caption"]), int(r["id"])
        yield Sample(r["image"], caption, f"tfds://vlm_tuxpaint/s{PREPARED_SIZE}/train/{i}",
                     dict(id=stamp, concept=concepts[stamp], category=_text(r["category"]), path=_text(r["path"]),
                          translations=_text(r["translations"])))


DATASETS: dict[str, Callable[..., Iterator[Sample]]] = {"emoji": emoji_samples, "tuxpaint": tuxpaint_samples}


def to_jpeg(data: bytes, size: int | None = None, quality: int = 95) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """(JPEG bytes, (w, h), original (w, h)): alpha over white, longer side bicubic-resized to `size` if given."""
    with Image.open(io.BytesIO(data)) as im:
        original = im.size
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        im = im.convert("RGB")
        if size and max(im.size) != size:
            scale = size / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return buf.getvalue(), im.size, original


def sample_key(shard: int, index: int, shard_size: int) -> str:
    """img2dataset's key: shard id then the index in the shard, zero-padded to 5 + ceil(log10(shard_size)) digits."""
    digits = math.ceil(math.log10(shard_size)) if shard_size > 1 else 0
    return f"{shard * 10 ** digits + index:0{SHARD_DIGITS + digits}d}"


def _schema(extra: dict[str, Any], with_image: bool) -> pa.Schema:
    """img2dataset's table: the saved input columns (the dataset's fields), its meta columns, then `jpg`."""
    kinds = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    fields = [(k, kinds[type(v)]) for k, v in extra.items()] + META_FIELDS
    return pa.schema(fields + ([("jpg", pa.binary())] if with_image else []))


class _RowGroupWriter:
    """A parquet file written a row group at a time (`row_group_size` rows each)."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_size: int):
        self.writer, self.schema, self.size, self.rows = pq.ParquetWriter(path, schema), schema, row_group_size, []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, self.schema), row_group_size=self.size)
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One read-only member, as webdataset's TarWriter writes it."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), TAR_MTIME, 0o444, "bigdata", "bigdata"
    tar.addfile(info, io.BytesIO(data))


def _write_shard(out: Path, shard: int, samples: list[Sample], fmt: str, shard_size: int, image_size: int | None,
                 quality: int, row_group_size: int) -> Path:
    """One shard (tar + metadata parquet, or parquet with images) and its _stats.json; returns the data file."""
    start, name = time.time(), f"{shard:0{SHARD_DIGITS}d}"
    schema = _schema(samples[0].extra, with_image=fmt == "parquet")
    path = out / f"{name}.{'tar' if fmt == 'wds' else 'parquet'}"
    tmp = path.with_name(path.name + ".tmp")
    table = _RowGroupWriter(tmp if fmt == "parquet" else out / f"{name}.parquet.tmp", schema, row_group_size)
    tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) if fmt == "wds" else None
    for index, s in enumerate(samples):
        jpg, (w, h), (ow, oh) = to_jpeg(s.image, image_size, quality)
        meta = dict(s.extra, caption=s.caption, url=s.url, key=sample_key(shard, index, shard_size),
                    status="success", error_message=None, width=w, height=h, original_width=ow,
                    original_height=oh, exif="{}", sha256=hashlib.sha256(s.image).hexdigest())
        if tar is None:
            table.write(dict(meta, jpg=jpg))
            continue
        table.write(meta)
        for ext, data in sorted({"jpg": jpg, "json": json.dumps(meta, indent=4).encode(),
                                 "txt": s.caption.encode()}.items()):  # webdataset writes a sample's members sorted
            _add_member(tar, f"{meta['key']}.{ext}", data)
    table.close()
    if tar is not None:
        tar.close()
        (out / f"{name}.parquet.tmp").rename(out / f"{name}.parquet")
    tmp.rename(path)
    end = time.time()
    stats = dict(count=len(samples), successes=len(samples), failed_to_download=0, failed_to_resize=0,
                 duration=end - start, start_time=start, end_time=end, status_dict={"success": len(samples)})
    (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
    return path


def write_shards(dataset: str, out: str | Path, fmt: str = "wds", shard_size: int = 10000, *,
                 data_dir: str | None = None, styles: Sequence[str] | None = None, max_examples: int | None = None,
                 image_size: int | None = None, quality: int = 95, row_group_size: int = ROW_GROUP_SIZE,
                 overwrite: bool = False) -> list[Path]:
    """Writes `dataset`'s examples in source order as shards of `shard_size` into `out`; returns the data files."""
    from vlm_jax.data.base import default_data_dir

    if dataset not in DATASETS:
        raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if fmt not in ("wds", "parquet") or shard_size < 1 or row_group_size < 1:
        raise SystemExit(f"need --format wds|parquet (got {fmt!r}), --shard_size >= 1, --row_group_size >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in out.iterdir() if SHARD_FILE.match(p.name))
    if old and not overwrite:
        raise SystemExit(f"{out} already holds shards ({old[0].name}, …): pass --overwrite to replace them")
    for p in old:
        p.unlink()
    samples = DATASETS[dataset](data_dir or default_data_dir(), *([tuple(styles)] if styles else []))
    paths, batch = [], []
    for i, s in enumerate(samples):
        if max_examples is not None and i >= max_examples:
            break
        batch.append(s)
        if len(batch) == shard_size:
            paths.append(_write_shard(out, len(paths), batch, fmt, shard_size, image_size, quality, row_group_size))
            batch = []
    if batch:
        paths.append(_write_shard(out, len(paths), batch, fmt, shard_size, image_size, quality, row_group_size))
    return paths


# ---- inspect: tarfile / pyarrow / PIL only, independent of the training reader ----


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: `{00000..00003}` (zero padding kept) and `{a,b}`."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        items = [f"{i:0{width}d}" for i in range(int(r.group(1)), int(r.group(2)) + 1)]
    else:
        items = body.split(",")
    return [p for item in items for p in expand_braces(head + item + tail)]


def shard_files(targets: Sequence[str]) -> list[Path]:
    """Data files of directories (their tars, else their parquet files), brace patterns or files."""
    files: list[Path] = []
    for target in targets:
        for t in map(Path, expand_braces(target)):
            if t.is_dir():
                tars = sorted(t.glob("*.tar"))
                files += tars or sorted(t.glob("*.parquet"))
            elif t.exists():
                files.append(t)
            else:
                raise SystemExit(f"no such shard or folder: {t}")
    return files


def _image_problem(data: bytes | None) -> tuple[str | None, tuple[int, int] | None]:
    """(reason, None) for an empty or undecodable image, else (None, (w, h))."""
    if not data:
        return "empty", None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return None, im.size
    except Exception:  # noqa: BLE001 — any decoder failure counts as undecodable
        return "undecodable", None


def _caption_problem(data: bytes | str | None) -> str | None:
    """"empty" (no bytes or only whitespace), "not_utf8", or None for a usable caption."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return "not_utf8"
    return None if data and data.strip() else "empty"


def _member_problem(ext: str, data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """(reason or None, image size) of one tar member by its extension."""
    if ext in IMAGE_EXTS:
        return _image_problem(data)
    if not data:
        return "empty", None
    if ext == "txt":
        return _caption_problem(data), None
    if ext == "json":
        try:
            json.loads(data)
        except ValueError:
            return "bad_json", None
    return None, None


def _new_report(path: Path, fmt: str) -> dict[str, Any]:
    """Empty per-shard counts."""
    stats = path.with_name(path.name.split(".")[0] + "_stats.json")
    successes = json.loads(stats.read_text()).get("successes") if stats.exists() else None
    return dict(shard=str(path), format=fmt, samples=0, keys=0, members=0, bad_members=0, bad={}, incomplete={},
                truncated=False, error=None, bytes=path.stat().st_size, image_bytes=0, pixels_w=0, pixels_h=0,
                stats_successes=successes)


def _count(report: dict[str, Any], group: str, reason: str) -> None:
    report[group][reason] = report[group].get(reason, 0) + 1


def _close_key(report: dict[str, Any], members: dict[str, tuple[bytes | None, str | None, Any]], cut: bool) -> None:
    """Counts one key: a sample when it has a good image and a good caption; else why not (`cut`: the key the
    truncation of its shard interrupted)."""
    report["keys"] += 1
    image = next((members[e] for e in IMAGE_EXTS if e in members), None)
    caption = members.get("txt")
    if image is not None and image[1] is None and caption is not None and caption[1] is None:
        report["samples"] += 1
        report["image_bytes"] += len(image[0])
        report["pixels_w"] += image[2][0]
        report["pixels_h"] += image[2][1]
    elif cut:
        _count(report, "incomplete", "cut")
    elif image is None or caption is None:
        _count(report, "incomplete", "no_image" if image is None else "no_caption")


def inspect_tar(path: Path) -> dict[str, Any]:
    """Counts of one webdataset tar; a truncated tar is counted up to the truncation."""
    report = _new_report(path, "wds")
    key, members, end = None, {}, 0
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                k = info.name[:len(info.name) - len(base)] + base.split(".", 1)[0]
                ext = base.split(".", 1)[1].lower() if "." in base else ""
                if k != key and key is not None:
                    _close_key(report, members, cut=False)
                    members = {}
                key = k
                try:
                    data = tar.extractfile(info).read()
                except (tarfile.ReadError, EOFError, OSError) as e:
                    report["error"], report["truncated"] = f"{info.name}: {e}", True
                    report["bad_members"] += 1
                    _count(report, "bad", "truncated")
                    members[ext] = (None, "truncated", None)
                    break
                report["members"] += 1
                reason, size = _member_problem(ext, data)
                if reason:
                    report["bad_members"] += 1
                    _count(report, "bad", reason)
                members.setdefault(ext, (data, reason, size))
            end = tar.offset
    except (tarfile.ReadError, EOFError) as e:
        report["error"], report["truncated"] = str(e), True
    if not report["truncated"]:  # a complete tar ends with two zero blocks after its last member
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read()
        if len(tail) < 1024 or tail.strip(b"\0"):
            report["error"], report["truncated"] = f"no end-of-archive blocks after byte {end}", True
    if key is not None:
        _close_key(report, members, cut=report["truncated"])
    return report


def inspect_parquet(path: Path) -> dict[str, Any]:
    """Counts of one img2dataset parquet shard by rows (rows whose status is not "success" count as failed)."""
    report = _new_report(path, "parquet")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 — a truncated file has no footer: pyarrow raises ArrowInvalid/OSError
        report["error"], report["truncated"] = str(e), True
        return report
    names = pf.schema_arrow.names
    image_col = next((c for c in IMAGE_EXTS if c in names), None)
    caption_col = next((c for c in ("caption", "txt") if c in names), None)
    columns = [c for c in (image_col, caption_col, "status") if c in names]
    report["row_groups"] = pf.num_row_groups
    for g in range(pf.num_row_groups):
        try:
            rows = pf.read_row_group(g, columns=columns).to_pylist()
        except Exception as e:  # noqa: BLE001
            report["error"], report["truncated"] = f"row group {g}: {e}", True
            break
        for row in rows:
            report["members"] += 1
            if row.get("status", "success") != "success":
                report["keys"] += 1
                _count(report, "incomplete", "failed")
                continue
            members = {}
            if row.get(image_col) is not None:
                reason, size = _image_problem(row[image_col])
                members["jpg"] = (row[image_col], reason, size)
            if caption_col and row.get(caption_col) is not None:
                members["txt"] = (row[caption_col], _caption_problem(row[caption_col]), None)
            for _, reason, _ in members.values():
                if reason:
                    report["bad_members"] += 1
                    _count(report, "bad", reason)
            _close_key(report, members, cut=False)
    return report


def inspect(targets: Sequence[str]) -> dict[str, Any]:
    """{"shards": [per-shard counts], "total": summed counts} of folders, brace patterns or shard files."""
    shards = [inspect_tar(p) if p.suffix == ".tar" else inspect_parquet(p) for p in shard_files(targets)]
    total: dict[str, Any] = dict(shards=len(shards), truncated_shards=[s["shard"] for s in shards if s["truncated"]])
    for k in ("samples", "keys", "members", "bad_members", "bytes", "image_bytes", "pixels_w", "pixels_h"):
        total[k] = sum(s[k] for s in shards)
    for group in ("bad", "incomplete"):
        total[group] = {}
        for s in shards:
            for reason, n in s[group].items():
                total[group][reason] = total[group].get(reason, 0) + n
    for r in shards + [total]:
        n = max(r["samples"], 1)
        r["mean_width"], r["mean_height"] = r.pop("pixels_w") / n, r.pop("pixels_h") / n
        r["jpeg_bytes_per_sample"] = r["image_bytes"] / n
    return dict(shards=shards, total=total)


def format_table(report: dict[str, Any]) -> str:
    """The inspect report as a text table, with the reasons of bad members and incomplete keys."""
    head = f"{'shard':<28}{'samples':>9}{'keys':>9}{'members':>9}{'bad':>6}{'incompl':>8}  {'trunc':<6}" \
           f"{'MB':>9}{'mean w×h':>13}{'JPEG B/sample':>15}"
    lines = [head, "-" * len(head)]
    t = report["total"]
    for r in report["shards"] + [dict(t, shard="total", truncated=bool(t["truncated_shards"]))]:
        name = r["shard"] if len(r["shard"]) <= 27 else "…" + r["shard"][-26:]
        lines.append(f"{name:<28}{r['samples']:>9}{r['keys']:>9}{r['members']:>9}{r['bad_members']:>6}"
                     f"{sum(r['incomplete'].values()):>8}  {'yes' if r['truncated'] else '':<6}{r['bytes'] / 1e6:>9.2f}"
                     f"{r['mean_width']:>7.1f}×{r['mean_height']:<5.1f}{r['jpeg_bytes_per_sample']:>15.0f}")
    lines.append(f"bad members: {t['bad'] or 'none'}; incomplete keys: {t['incomplete'] or 'none'}; "
                 f"truncated shards: {t['truncated_shards'] or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: `inspect TARGET…`, else writing shards."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["inspect"]:
        parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.make_shards inspect",
                                         description="Counts samples, bad members and sizes of shards.")
        parser.add_argument("targets", nargs="+",
                            help="shard folders, brace patterns (DIR/{00000..00003}.tar) or files")
        parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
        args = parser.parse_args(argv[1:])
        report = inspect(args.targets)
        print(json.dumps(report, indent=1) if args.json else format_table(report))
        return
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.make_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--format", default="wds", choices=("wds", "parquet"))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shard_size", type=int, default=10000, help="samples per shard (img2dataset default)")
    parser.add_argument("--styles", default="",
                        help=f"emoji styles, comma-separated (default {','.join(TRAIN_STYLES)})")
    parser.add_argument("--max_examples", type=int, default=None, help="write only the first N examples")
    parser.add_argument("--image_size", type=int, default=None,
                        help="bicubic resize of the longer side to this (default: the stored size)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--row_group_size", type=int, default=ROW_GROUP_SIZE, help="parquet rows per row group")
    parser.add_argument("--data_dir", default=None, help="prepared data (default $VLM_JAX_DATA_DIR or ./data_cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    args = parser.parse_args(argv)
    styles = [s for s in args.styles.split(",") if s]
    if styles and args.dataset != "emoji":
        raise SystemExit("--styles is for --dataset emoji")
    paths = write_shards(args.dataset, args.out, args.format, args.shard_size, data_dir=args.data_dir,
                         styles=styles or None, max_examples=args.max_examples, image_size=args.image_size,
                         quality=args.quality, row_group_size=args.row_group_size, overwrite=args.overwrite)
    total = sum(json.loads(p.with_name(p.name.split(".")[0] + "_stats.json").read_text())["count"] for p in paths)
    size = sum(p.stat().st_size for p in paths)
    print(f"{args.dataset}: {total} samples in {len(paths)} {args.format} shards in {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
