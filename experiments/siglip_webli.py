"""SigLIP ViT-B/16 at WebLI-like scale (Zhai et al. 2023): sigmoid loss, batch 32k, billions of samples seen, trained
from webdataset / parquet shards of any web-scale image–text set (WebLI itself is not public).

  --config experiments/siglip_webli.py:shards=URL                     SigLIP B/16, 224 px, 9B seen at batch 32,768
  --config experiments/siglip_webli.py:shards=URL,workers=16,samples=40_000_000_000   the released checkpoints' 40B
  --config experiments/siglip_webli.py:data=synthetic                 the same shapes, no shards (dry runs)
  --config experiments/siglip_webli.py:data=synthetic,res=256,text_len=64
  --config experiments/siglip_webli.py:loss=softmax,shards=URL        the paper's softmax (CLIP) baseline, same setup
  experiments/sweeps/siglip_batch_study.py                            the batch-size study as a sweep

URL is a shard pattern (`gs://bucket/laion/{000000..231348}.tar`, a folder, a glob; see docs/shards.md).
Hyper-parameters and where they come from:

* sigmoid loss, logit scale t' = log 10 (t = 10) and bias b = -10 at init (SigLIP paper, Sec. 3 / Algorithm 1);
  global batch 32,768 ("32k is sufficient", paper abstract and Sec. 4).
* samples seen: 9B by default (the paper's long B/16 runs; not verified against the paper text from here — the
  SigLIP 2 paper trains its B/16 for 40B at batch 32k: pass samples=40_000_000_000); steps = samples / batch.
* Adam(W) lr 1e-3, decoupled weight decay 1e-4, gradient clipping at norm 1 (SigLIP's from-scratch setting, the same
  in the SigLIP 2 paper's setup); beta2 0.95 (SigLIP, "stabilizing large-batch training"; this repo's `siglip` preset);
  cosine schedule with 20k warmup steps (SigLIP 2's stated schedule; SigLIP's own warmup is not restated here).
* ViT-B/16 with a MAP head at 224 px (res=256 for the 256 px checkpoints); text transformer the image tower's
  size (768 wide, 12 layers, 12 heads, not causal, last-token pooled), embedding 768; text 16 tokens
  (paper; the released checkpoints use 64: text_len=64), 32k-piece SentencePiece (paper: trained on English
  WebLI; here `tokenizer=PATH`, or "sentencepiece": trained on the shards' first 100k captions).
* Evaluation: the standard zero-shot suite (ImageNet-1k, CIFAR-10, COCO retrieval; `evals.suite`) from prepared
  TFDS data in `suite_dir`; `data=synthetic` evaluates nothing.

Host CPU cores per chip needed by the input pipeline: docs/shards.md "Recipes" and benchmarks/dryrun.md.
"""
from vlm_jax.config import config_args, pod_run
from vlm_jax.data.shards.config import recipe_data
from vlm_jax.objectives.contrastive import apply_loss_preset
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

BATCH, SAMPLES, LR, WD, WARMUP, VOCAB = 32_768, 9_000_000_000, 1e-3, 1e-4, 20_000, 32_000
TEXT = {"B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12), "L": dict(width=1024, depth=24, mlp_dim=4096,
                                                                              num_heads=16)}
SUITE = "imagenet,cifar10,coco"


def get_config(arg=None):
    """`arg`: shards=URL, data=shards|synthetic, tokenizer=PATH|sentencepiece, workers=N (grain decode processes),
    variant=B/16, res (image px), text_len, batch, samples, fsdp (-1: all devices), remat, suite_dir (TFDS data
    dir of the evaluation suite), loss=sigmoid|softmax (the CLIP baseline of the paper's comparisons)."""
    arg = config_args(arg, variant="B/16", shards="", data="shards", tokenizer="sentencepiece", workers=0,
                      res=224, text_len=16, batch=BATCH, samples=SAMPLES, fsdp=-1, remat="minimal", suite_dir="",
                      loss="sigmoid")
    if arg.loss not in ("sigmoid", "softmax"):
        raise ValueError(f"loss must be 'sigmoid' or 'softmax', got {arg.loss!r}")
    if arg.data not in ("shards", "synthetic"):
        raise ValueError(f"data must be 'shards' or 'synthetic', got {arg.data!r}")
    if arg.data == "shards" and not arg.shards:
        raise ValueError("siglip_webli.py needs shards=URL (e.g. shards=gs://bucket/laion/{000000..231348}.tar), or "
                         "data=synthetic for shapes only")
    size = arg.variant.partition("/")[0]
    if size not in TEXT:
        raise ValueError(f"variant must be one of {[f'{k}/16' for k in TEXT]}, got {arg.variant!r}")
    steps = max(int(arg.samples) // arg.batch, 1)

    c, common = pod_run("contrastive", steps, arg.batch, fsdp_mesh(arg.fsdp), arg.remat)
    c.data = recipe_data(arg.data, arg.res, arg.text_len, VOCAB, arg.tokenizer, arg.shards, arg.workers)
    c.model = dict(
        image=dict(posemb="learn", pool_type="map", **parse_variant(arg.variant), **common),
        text=dict(vocab_size=0, causal=False, pool_type="last", max_len=arg.text_len, **TEXT[size], **common),
        embed_dim=TEXT[size]["width"])
    loss = apply_loss_preset(c, "siglip" if arg.loss == "sigmoid" else "clip")
    c.optim = dict(name="adamw", lr=LR, b2=loss["b2"], weight_decay=WD, warmup_steps=min(WARMUP, steps // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=min(1_000, max(steps // 4, 1)), keep=3)
    c.evals = dict(sets=[])
    if arg.data == "shards":
        c.evals.suite = SUITE
        c.evals.suite_data_dir = arg.suite_dir
    return c
