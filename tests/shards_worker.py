"""One jax.distributed process of the shard partition test: its first epoch share of a shard dataset's stream
(the trainer's call: `train(local_batch, seed, process_index, process_count)`), written as concept ids."""
import os
import sys

pid, nproc, port, shards, data_dir, out = sys.argv[1:7]
pid, nproc = int(pid), int(nproc)
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                           coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=30)
from vlm_jax.data import base  # noqa: E402

config = ml_collections.ConfigDict(dict(name="shards", data_dir=data_dir, image_size=16, text_len=16, vocab_size=300,
                                        shards=dict(urls=shards, fields=("concept",), window=2)))
ds = base.get(config)
per_process = 30 // jax.process_count()
it = iter(ds.train(5, 0, jax.process_index(), jax.process_count()))
concepts = np.concatenate([next(it)["concept"] for _ in range(per_process // 5)])
np.save(out, concepts)
