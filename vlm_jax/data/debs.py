"""Debian packages as data: a package's .deb (from <data_dir>/debs, or `apt-get download`, which needs no root)
unpacked once into <data_dir>/<name>, keeping only the files a dataset reads (`dpkg-deb --fsys-tarfile` streamed
through `tarfile`, so the rest never touches the disk). Re-extracted when the .deb changes; file-locked."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable

from vlm_jax.data import base

MARKER = ".extracted_from"  # in <data_dir>/<name>: the name of the .deb it was unpacked from


def debs_dir(data_dir: str | Path) -> Path:
    """Where the .deb files are kept: <data_dir>/debs."""
    return Path(data_dir) / "debs"


def find_deb(data_dir: str | Path, package: str) -> Path | None:
    """The newest-named .deb of `package` in <data_dir>/debs, if any."""
    debs = sorted(debs_dir(data_dir).glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def download(data_dir: str | Path, package: str) -> Path:
    """`apt-get download` into <data_dir>/debs; a clear error naming the commands when it cannot."""
    debs = debs_dir(data_dir)
    debs.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        why = (r.stderr or r.stdout).strip().splitlines()[-1:] if r.returncode else []
    except FileNotFoundError:
        why = ["apt-get not found"]
    deb = find_deb(data_dir, package)
    if deb is None:
        raise FileNotFoundError(
            f"No {package} .deb in {debs} and `apt-get download {package}` failed ({' '.join(why) or 'no file'}). "
            f"Run `bash scripts/setup.sh`, or `cd {debs} && apt-get download {package}` (after "
            f"`sudo apt-get update` when apt has no package lists), or copy the .deb there.")
    return deb


def extract(deb: Path, out: Path, wanted: Callable[[str], bool]) -> None:
    """The members of `deb` whose path (no leading "./") `wanted` accepts into `out`, atomically, with a marker."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"dpkg-deb not found (needed to unpack {deb}): `apt-get install dpkg`") from e
    failure = None
    strip = lambda name: name[2:] if name.startswith("./") else name  # noqa: E731
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(tmp, members=(m for m in tar if (m.isfile() or m.isdir()) and wanted(strip(m.name))),
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


def fetch(data_dir: str | Path, package: str, name: str, wanted: Callable[[str], bool], what: str) -> Path:
    """<data_dir>/<name>, `package`'s wanted files unpacked there (from a .deb in <data_dir>/debs or one
    `apt-get download`ed). Inside `base.read_only()`: the folder as it was extracted, else FileNotFoundError naming
    `what`."""
    data_dir = Path(data_dir)
    out = data_dir / name
    if base.is_read_only():
        if not (out / MARKER).exists():
            raise base.not_prepared(what, data_dir, f"`bash scripts/setup.sh` ({package})")
        return out
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f".vlm_{name}_fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deb = find_deb(data_dir, package) or download(data_dir, package)
        marker = out / MARKER
        if not (marker.exists() and marker.read_text().strip() == deb.name):
            extract(deb, out, wanted)
    return out
