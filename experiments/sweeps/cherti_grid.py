"""Cherti et al.'s CLIP scaling grid (CVPR 2023) as a sweep: the 29 OpenCLIP runs of ViT-B/32, B/16, L/14, H/14 and
g/14 on LAION-80M / 400M / 2B for 3B / 13B / 34B samples seen, each at the batch size and learning rate in its
released checkpoint's name (experiments/clip_laion.py holds the shared settings and where they come from).

  python -m vlm_jax.tools.plan experiments/sweeps/cherti_grid.py:data=synthetic --md docs/pod_plans/cherti_grid.md
      each point dry-run on its slice (below): memory per chip, predicted step time, total chip-hours
  python -m vlm_jax.tools.sweep "experiments/sweeps/cherti_grid.py:laion80m=URL,laion400m=URL,laion2b=URL" \\
      --dir gs://bucket/runs/cherti print              one `vlm_jax.main` command per run for the cluster scheduler

URLs are shard patterns (docs/shards.md); LAION-80M is the study's random 80M subset of LAION-400M.
The names' batch sizes ("88k") are taken as the nearest multiple of 512 (88,064; 86,016; 78,848; 65,536; 33,280;
32,768), so every slice below divides them; samples seen are the names' nominal 3B / 13B / 34B.
"""
from vlm_jax.config import config_args

BATCH = {"88k": 88_064, "86k": 86_016, "79k": 78_848, "64k": 65_536, "33k": 33_280, "32k": 32_768}
# (model, data, samples seen, learning rate, batch) of each released run
RUNS = [
    ("B/32", "80M", "3B", "5e-4", "32k"), ("B/32", "80M", "13B", "5e-4", "32k"), ("B/32", "80M", "34B", "1e-3", "88k"),
    ("B/32", "400M", "3B", "1e-3", "88k"), ("B/32", "400M", "13B", "1e-3", "86k"),
    ("B/32", "400M", "34B", "5e-4", "32k"), ("B/32", "2B", "3B", "1e-3", "88k"), ("B/32", "2B", "13B", "5e-4", "32k"),
    ("B/32", "2B", "34B", "1e-3", "79k"),
    ("B/16", "80M", "3B", "1e-3", "88k"), ("B/16", "80M", "13B", "1e-3", "88k"), ("B/16", "80M", "34B", "1e-3", "88k"),
    ("B/16", "400M", "3B", "1e-3", "88k"), ("B/16", "400M", "13B", "5e-4", "33k"),
    ("B/16", "400M", "34B", "1e-3", "88k"), ("B/16", "2B", "3B", "1e-3", "88k"), ("B/16", "2B", "13B", "1e-3", "88k"),
    ("B/16", "2B", "34B", "1e-3", "88k"),
    ("L/14", "80M", "3B", "1e-3", "88k"), ("L/14", "80M", "13B", "1e-3", "88k"), ("L/14", "80M", "34B", "1e-3", "88k"),
    ("L/14", "400M", "3B", "1e-3", "88k"), ("L/14", "400M", "13B", "1e-3", "86k"),
    ("L/14", "400M", "34B", "1e-3", "86k"), ("L/14", "2B", "3B", "1e-3", "88k"), ("L/14", "2B", "13B", "1e-3", "86k"),
    ("L/14", "2B", "34B", "1e-3", "86k"),
    ("H/14", "2B", "34B", "5e-4", "79k"),
    ("g/14", "2B", "13B", "5e-4", "64k"),
]
# the slice each model is planned on (fnmatch on the run name → TPU topology), with what makes it fit
SLICES = [("run-B32_*", "v5p-128"), ("run-B16_*", "v5p-256"), ("run-L14_*", "v5p-512"), ("run-H14_*", "v5p-1024"),
          ("run-g14_*", "v5p-1024")]
REMAT = {"H/14": "full", "g/14": "full"}  # recompute every activation in the two largest towers


def get_sweep(arg=None):
    """`arg`: data=synthetic (shapes only: dry runs and plans), or laion80m=URL,laion400m=URL,laion2b=URL."""
    arg = config_args(arg, data="shards", laion80m="", laion400m="", laion2b="")
    points = {}
    for model, data, samples, lr, batch in RUNS:
        name = f"{model.replace('/', '')}_{data}_{samples}"
        if arg.data == "synthetic":
            source = "data=synthetic"
        else:
            url = arg[f"laion{data.lower()}"]
            if not url:
                raise ValueError(f"run {name} needs laion{data.lower()}=URL (or data=synthetic for shapes only)")
            source = f"shards={url}"
        spec = f"variant={model},samples={samples[:-1]}e9,lr={lr},batch={BATCH[batch]},{source}"
        points[name] = {"arg": f"{spec},remat={REMAT.get(model, 'minimal')}"}
    return dict(base="experiments/clip_laion.py", axes=dict(run=points), slices=SLICES)
