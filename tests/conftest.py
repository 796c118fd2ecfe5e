"""Test session setup: 8 simulated CPU devices, shared prepared data.

No persistent compilation cache: with jax 0.10.2, loading a cached multi-device CPU executable aborted the
process (seen in test_sharding on a second run), so every test process compiles afresh.
"""
import os
from pathlib import Path

# Tiny test models spend most of their time in XLA's compiler: LLVM optimisation level 0 compiles faster (about a
# quarter off compile-bound test files, measured) and runs these models no slower.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # tests simulate devices on the CPU; TPU dry runs need no TPU
_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLM_JAX_DATA_DIR", str(_ROOT / "data_cache"))
os.environ.setdefault("VLM_JAX_NPM_CACHE", str(_ROOT / "data_cache" / "npm"))  # shared by tmp-dir datasets

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain reads absl flags


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still run in CI)")


@pytest.fixture(scope="session")
def data_dir() -> str:
    """Prepared full emoji dataset (built once, reused across sessions via data_cache/)."""
    from vlm_jax.data import emoji_tfds
    from vlm_jax.data.image_text import PREPARED_SIZE

    d = os.environ["VLM_JAX_DATA_DIR"]
    emoji_tfds.prepare(d, image_size=PREPARED_SIZE)
    return d
