"""CLIP ViT-B/32 and B/16 at DataComp small / medium scale (Gadre et al. 2023), trained from webdataset shards.

  --config experiments/clip_datacomp.py:scale=medium,shards=URL                DataComp-medium, ViT-B/32 (128M seen)
  --config experiments/clip_datacomp.py:scale=small,shards=URL,workers=8       DataComp-small (12.8M), 8 decode procs
  --config experiments/clip_datacomp.py:scale=medium,variant=B/16,shards=URL   ViT-B/16, same hyper-parameters
  --config experiments/clip_datacomp.py:scale=medium,data=synthetic            the same shapes, no shards (dry runs)
  --config experiments/clip_datacomp.py:scale=small,variant=B/16,data=synthetic

URL is a shard pattern (`gs://bucket/datacomp/medium/{00000000..00012895}.tar`, a folder, a glob; see
docs/shards.md). Hyper-parameters, from DataComp's fixed training code (github.com/mlfoundations/datacomp,
`scale_configs.py`; the paper's Table of scales), run through open_clip's defaults:

* samples seen: small 12.8M, medium 128M (`train_num_samples`); global batch 4096; steps = samples / batch
  (small 3,125, medium 31,250). Model ViT-B-32 at both scales (DataComp-large uses B/16 with batch 8192; B/16 at
  small / medium with these settings is this recipe's own variant).
* AdamW, lr 5e-4, warmup 500 steps then cosine to 0 (`learning_rate`, `warmup`; open_clip `--lr-scheduler
  cosine`); beta2 None in scale_configs → open_clip's ViT default 0.98, beta1 0.9, eps 1e-6, weight decay 0.2
  (open_clip defaults, not on biases / gains / logit scale); no gradient clipping (datacomp `--grad_clip_norm`
  default None). Temperature init 1/0.07, clamped at 100 (CLIP).
* 224 px, open_clip's RandomResizedCrop(scale 0.9–1) (the shards dataset's default augment); text: 77 tokens,
  causal text transformer 512 wide, 12 layers, 8 heads, embedding 512 (open_clip ViT-B-32 / ViT-B-16 configs).
  Deviation: open_clip's 49,408-token BPE is not available here; the tokenizer is SentencePiece (`tokenizer=PATH`
  a .model file, or "sentencepiece": 32,000 pieces trained on the shards' first 100k captions).
* Evaluation: the standard zero-shot suite (ImageNet-1k, CIFAR-10, COCO retrieval; `evals.suite`) from prepared
  TFDS data in `suite_dir` ("" → $TFDS_DATA_DIR or ~/tensorflow_datasets); DataComp's 38-task average is not
  reproduced. `data=synthetic` (dry runs, shape checks) evaluates nothing.

Host CPU cores per chip needed by the input pipeline: docs/shards.md "Recipes" and benchmarks/dryrun.md.
"""
from vlm_jax.config import config_args, pod_run
from vlm_jax.data.shards.config import recipe_data
from vlm_jax.objectives.contrastive import apply_loss_preset
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

SCALES = {"small": 12_800_000, "medium": 128_000_000}  # DataComp scale_configs.py train_num_samples
BATCH, LR, WARMUP, WD, B2, EPS = 4096, 5e-4, 500, 0.2, 0.98, 1e-6  # scale_configs.py + open_clip defaults
TEXT = dict(width=512, depth=12, mlp_dim=2048, num_heads=8)  # open_clip ViT-B-32 / ViT-B-16 text_cfg
EMBED, TEXT_LEN, VOCAB, RES = 512, 77, 32_000, 224
SUITE = "imagenet,cifar10,coco"


def get_config(arg=None):
    """`arg`: scale=small|medium, variant=B/32|B/16, shards=URL, data=shards|synthetic, tokenizer=PATH|sentencepiece,
    workers=N (grain decode processes), batch / samples (override the paper's), fsdp (-1: all devices), remat,
    suite_dir (TFDS data dir of the evaluation suite)."""
    arg = config_args(arg, scale="medium", variant="B/32", shards="", data="shards", tokenizer="sentencepiece",
                      workers=0, batch=BATCH, samples=0, fsdp=-1, remat="minimal", suite_dir="")
    if arg.scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {arg.scale!r}")
    if arg.data not in ("shards", "synthetic"):
        raise ValueError(f"data must be 'shards' or 'synthetic', got {arg.data!r}")
    if arg.data == "shards" and not arg.shards:
        raise ValueError("clip_datacomp.py needs shards=URL (e.g. shards=gs://bucket/datacomp/{00000000..00001287}.tar)"
                         ", or data=synthetic for shapes only")
    samples = int(arg.samples or SCALES[arg.scale])
    steps = max(samples // arg.batch, 1)

    c, common = pod_run("contrastive", steps, arg.batch, fsdp_mesh(arg.fsdp), arg.remat)
    c.data = recipe_data(arg.data, RES, TEXT_LEN, VOCAB, arg.tokenizer, arg.shards, arg.workers)
    c.model = dict(
        image=dict(posemb="learn", pool_type="tok", **parse_variant(arg.variant), **common),
        text=dict(vocab_size=0, causal=True, pool_type="last", max_len=TEXT_LEN, **TEXT, **common),
        embed_dim=EMBED)
    apply_loss_preset(c, "clip")
    c.optim = dict(name="adamw", lr=LR, b1=0.9, b2=B2, eps=EPS, weight_decay=WD, warmup_steps=min(WARMUP, steps // 2),
                   schedule="cosine", clip_norm=0.0)
    c.checkpoint = dict(every_steps=min(1_000, max(steps // 4, 1)), keep=3)
    c.evals = dict(sets=[])
    if arg.data == "shards":
        c.evals.suite = SUITE
        c.evals.suite_data_dir = arg.suite_dir
    return c
