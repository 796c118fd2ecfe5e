"""Installable vlm_jax package: `pip install -e .[test]`, plus `.[tpu-aot]` for TPU dry runs, `.[s3]` for s3:// shards
(and gs:// through GCS's S3-compatible endpoint; no gcsfs release matches the pinned fsspec)."""
from pathlib import Path

from setuptools import find_packages, setup

_here = Path(__file__).parent


def _reqs(name: str) -> list[str]:
    lines = (_here / name).read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setup(
    name="vlm_jax",
    version="0.1.0",
    description="Vision-language pretraining in JAX/Flax: one trainer, many objectives.",
    packages=find_packages(include=["vlm_jax", "vlm_jax.*"]),
    python_requires=">=3.11",
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt"), "tpu-aot": _reqs("requirements-tpu-aot.txt"),
                    "s3": ["s3fs==2026.9.0"]},
)
