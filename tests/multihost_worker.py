"""One process of the multi-host test: 3 train steps on fixed global batches, params gathered to process 0."""
import os
import sys

pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                               coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=30)
from absl import flags  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from vlm_jax.config import apply_overrides, load_config  # noqa: E402
from vlm_jax.train.optim import path_str  # noqa: E402
from vlm_jax.train.trainer import Setup, finalize_config  # noqa: E402

flags.FLAGS.mark_as_parsed()
config = finalize_config(load_config("experiments/emoji_two_tower.py:size=test"))
config = apply_overrides(config, ["mesh=[('data', 4), ('tensor', 2)]", "batch_size=16", "optim.name=sgd",
                                  "optim.momentum=0.9", "optim.lr=0.1", "optim.warmup_steps=1",
                                  "model.image.num_heads=4", "model.text.num_heads=4"])
setup = Setup(config)
assert jax.device_count() == 8 and jax.process_count() == nproc
rng = np.random.default_rng(0)
size, length = setup.objective.data.image_size, setup.objective.data.text_len
state = setup.init_state(jax.random.key(0))
losses = []
for _ in range(3):
    batch = {"image": rng.uniform(-1, 1, (16, size, size, 3)).astype(np.float32),
             "text": rng.integers(3, setup.objective.data.vocab_size, (16, length)).astype(np.int32)}
    # every process builds the same global batch and hands over the rows its devices hold
    glob = {k: jax.make_array_from_callback(v.shape, setup.batch_sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()}
    state, metrics = setup.train_step(state, glob)
    losses.append(float(metrics["loss"]))
with setup.context():  # evaluator path: global eval batches, replicated outputs readable on every process
    emb = setup.objective.embedder.images(state.params, rng.uniform(-1, 1, (70, size, size, 3)).astype(np.float32))
params = multihost_utils.process_allgather(state.params, tiled=True)
if pid == 0:
    flat = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, losses=np.array(losses), embeddings=emb, **flat)
if nproc > 1:
    jax.distributed.shutdown()
