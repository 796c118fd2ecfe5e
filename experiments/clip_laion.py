"""OpenCLIP on LAION-style shards at the settings of Cherti et al.'s scaling study (CVPR 2023, "Reproducible scaling
laws for contrastive language-image learning"): ViT-B/32 … g/14, any samples seen, their batch sizes and rates.

  --config experiments/clip_laion.py:variant=L/14,samples=13e9,batch=86016,lr=1e-3,shards=URL
  --config experiments/clip_laion.py:variant=H/14,samples=34e9,batch=78848,lr=5e-4,data=synthetic   (dry runs)
  experiments/sweeps/cherti_grid.py                the study's 29 runs as a sweep (docs/scaling.md "Pod recipes")

Where the settings come from:

* Architectures: open_clip's model configs (ViT-B-32, ViT-B-16, ViT-L-14, ViT-H-14, ViT-g-14): image towers as
  `vlm_jax.variants` (H: 1280 wide, 32 layers; g: 1408 wide, 40 layers, MLP 6144), class-token pooling, 224 px;
  causal text transformer, last-token pooled, 77 tokens: 512 wide / 12 layers / 8 heads and embedding 512 (B),
  768 / 12 / 12 and 768 (L), 1024 / 24 / 16 and 1024 (H, g).
* Batch size and learning rate per run: the study's released checkpoint names (`…_lr-1e-3_bs-88k`); this recipe
  takes the batch as given (the sweep rounds "88k" etc. to multiples of 512 so every slice divides it).
* AdamW, beta1 0.9, beta2 0.98, eps 1e-6, weight decay 0.2, cosine decay to 0 after a linear warmup, no gradient
  clipping: open_clip's defaults for ViT models. Warmup defaults to open_clip's 10,000 steps (the study's own
  warmup is not in the names; pass warmup=N). bf16 matmuls (open_clip trains with AMP).
* Deviation: open_clip's 49,408-token BPE is not bundled for shard training; the text vocabulary is SentencePiece
  (tokenizer=PATH or "sentencepiece"), its shapes sized at 49,408 so memory and FLOPs match.

Evaluation is the standard zero-shot suite from prepared TFDS data (`suite_dir`); data=synthetic evaluates nothing.
"""
from vlm_jax.config import config_args, pod_run
from vlm_jax.data.shards.config import recipe_data
from vlm_jax.objectives.contrastive import apply_loss_preset
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

# image size → (text width, depth, heads, embedding dim) in open_clip's configs
TEXT = {"B": (512, 12, 8, 512), "L": (768, 12, 12, 768), "H": (1024, 24, 16, 1024), "g": (1024, 24, 16, 1024)}
RES, TEXT_LEN, VOCAB, B2, EPS, WD, WARMUP = 224, 77, 49_408, 0.98, 1e-6, 0.2, 10_000
SUITE = "imagenet,cifar10,coco"


def get_config(arg=None):
    """`arg`: variant=B/32|B/16|L/14|H/14|g/14, samples (seen), batch, lr, warmup, shards=URL, data=shards|synthetic,
    tokenizer=PATH|sentencepiece, workers=N, fsdp (-1: all devices), remat, grad_accum, suite_dir."""
    arg = config_args(arg, variant="B/32", samples=3e9, batch=88_064, lr=1e-3, warmup=WARMUP, shards="",
                      data="shards", tokenizer="sentencepiece", workers=0, fsdp=-1, remat="minimal", grad_accum=1,
                      suite_dir="")
    size = arg.variant.partition("/")[0]
    if size not in TEXT:
        raise ValueError(f"variant must be one of B/32, B/16, L/14, H/14, g/14, got {arg.variant!r}")
    if arg.data not in ("shards", "synthetic"):
        raise ValueError(f"data must be 'shards' or 'synthetic', got {arg.data!r}")
    if arg.data == "shards" and not arg.shards:
        raise ValueError("clip_laion.py needs shards=URL (e.g. shards=gs://bucket/laion400m/{00000..41407}.tar), or "
                         "data=synthetic for shapes only")
    steps = max(int(float(arg.samples)) // arg.batch, 1)
    width, depth, heads, embed = TEXT[size]

    c, common = pod_run("contrastive", steps, arg.batch, fsdp_mesh(arg.fsdp), arg.remat, arg.grad_accum)
    c.data = recipe_data(arg.data, RES, TEXT_LEN, VOCAB, arg.tokenizer, arg.shards, arg.workers)
    c.model = dict(
        image=dict(posemb="learn", pool_type="tok", **parse_variant(arg.variant), **common),
        text=dict(vocab_size=0, causal=True, pool_type="last", max_len=TEXT_LEN, width=width, depth=depth,
                  mlp_dim=4 * width, num_heads=heads, **common),
        embed_dim=embed)
    apply_loss_preset(c, "clip")
    c.optim = dict(name="adamw", lr=float(arg.lr), b1=0.9, b2=B2, eps=EPS, weight_decay=WD,
                   warmup_steps=min(int(arg.warmup), steps // 2), schedule="cosine", clip_norm=0.0)
    c.checkpoint = dict(every_steps=min(1_000, max(steps // 4, 1)), keep=3)
    c.evals = dict(sets=[])
    if arg.data == "shards":
        c.evals.suite = SUITE
        c.evals.suite_data_dir = arg.suite_dir
    return c
