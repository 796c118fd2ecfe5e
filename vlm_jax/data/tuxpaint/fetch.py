"""Fetching the Tux Paint stamps: the `tuxpaint-stamps-default` .deb (from <data_dir>/debs, or `apt-get download`)
unpacked once into <data_dir>/tuxpaint, keeping only the stamp texts, pictures and options and the copyright file
(`dpkg-deb --fsys-tarfile` streamed through `tarfile`: the 191 MB of spoken .ogg never touch the disk)."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from vlm_jax.data import base

PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = "usr/share/tuxpaint/stamps"
COPYRIGHT = f"usr/share/doc/{PACKAGE}/copyright"
KEEP_SUFFIXES = (".txt", ".png", ".svg", ".dat")
MARKER = ".extracted_from"  # in <data_dir>/tuxpaint: the name of the .deb it was unpacked from


def _debs_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "debs"


def find_deb(data_dir: str | Path) -> Path | None:
    """The newest-named tuxpaint-stamps-default .deb in <data_dir>/debs, if any."""
    debs = sorted(_debs_dir(data_dir).glob(f"{PACKAGE}_*.deb"))
    return debs[-1] if debs else None


def _download(data_dir: str | Path) -> Path:
    """`apt-get download` into <data_dir>/debs; a clear error naming the commands when it cannot."""
    debs = _debs_dir(data_dir)
    debs.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["apt-get", "download", PACKAGE], cwd=debs, capture_output=True, text=True)
        why = (r.stderr or r.stdout).strip().splitlines()[-1:] if r.returncode else []
    except FileNotFoundError:
        why = ["apt-get not found"]
    deb = find_deb(data_dir)
    if deb is None:
        raise FileNotFoundError(
            f"No {PACKAGE} .deb in {debs} and `apt-get download {PACKAGE}` failed ({' '.join(why) or 'no file'}). "
            f"Run `bash scripts/setup.sh`, or `cd {debs} && apt-get download {PACKAGE}` (after "
            f"`sudo apt-get update` when apt has no package lists), or copy the .deb there.")
    return deb


def _wanted(name: str) -> bool:
    name = name[2:] if name.startswith("./") else name
    return name == COPYRIGHT or (name.startswith(STAMPS_DIR + "/") and name.endswith(KEEP_SUFFIXES))


def _extract(deb: Path, out: Path) -> None:
    """The stamp texts/pictures/options and the copyright of `deb` into `out`, atomically, with a marker file."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"dpkg-deb not found (needed to unpack {deb}): `apt-get install dpkg`") from e
    failure = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(tmp, members=(m for m in tar if (m.isfile() or m.isdir()) and _wanted(m.name)),
                           filter="data")
    except (tarfile.TarError, OSError) as e:
        failure = e
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if proc.returncode or failure is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"Unpacking {deb} failed (`dpkg-deb --fsys-tarfile` exit {proc.returncode}: "
                           f"{err or failure}); delete it and run `bash scripts/setup.sh` to download it again")
    (tmp / MARKER).write_text(deb.name + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def fetch(data_dir: str | Path) -> Path:
    """The extracted stamps root (<data_dir>/tuxpaint/usr/share/tuxpaint/stamps): uses a .deb in <data_dir>/debs
    or `apt-get download`s one, and extracts it once (file-locked; re-extracted when the .deb changes). Inside
    `base.read_only()`: the root as it was extracted, else FileNotFoundError."""
    data_dir = Path(data_dir)
    out = data_dir / "tuxpaint"
    if base.is_read_only():
        if not (out / MARKER).exists():
            raise base.not_prepared("The unpacked Tux Paint stamps", data_dir, "`vlm_jax.data.tuxpaint.fetch`")
        return out / STAMPS_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".vlm_tuxpaint_fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deb = find_deb(data_dir) or _download(data_dir)
        marker = out / MARKER
        if not (marker.exists() and marker.read_text().strip() == deb.name):
            _extract(deb, out)
    return out / STAMPS_DIR
