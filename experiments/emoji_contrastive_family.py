"""The contrastive family of the survey on one budget (issue 31): every method is the emoji two-tower run
(experiments/emoji_two_tower.py: same towers, data, augmentation, schedule and evaluation) with its own objective
and loss settings, so the comparison table (docs/contrastive_family.md) differs only in the method.

  --config experiments/emoji_contrastive_family.py:method=align          ALIGN's loss (label smoothing, temperature)
  --config experiments/emoji_contrastive_family.py:method=otter          OTTER (optimal-transport soft targets)
  --config experiments/emoji_contrastive_family.py:method=filip          FILIP (token-wise late interaction)
  --config experiments/emoji_contrastive_family.py:method=nlip           NLIP (pairs weighed by their noise probability)
  --config experiments/emoji_contrastive_family.py:method=laclip         LaCLIP (captions rewritten with other names)
  --config experiments/emoji_contrastive_family.py:method=llip           Llip (mixture tokens pooled per caption)
  --config experiments/emoji_contrastive_family.py:method=kelip          KELIP (English + Korean captions, multi-crop)
  --config experiments/emoji_contrastive_family.py:method=zerovl         ZeroVL (one style per batch, coin-flip mixup)
  --config experiments/emoji_contrastive_family.py:method=declip         DeCLIP (views, SimSiam, MLM, NN queue)
  --config experiments/emoji_contrastive_family.py:method=alip           ALIP (raw + clean captions, gated)
  --config experiments/emoji_contrastive_family.py:method=pyramidclip    PyramidCLIP (3 visual × 3 text levels)
  --config experiments/emoji_contrastive_family.py:method=raclip         RA-CLIP (retrieved reference pairs)
  --config experiments/emoji_contrastive_family.py:method=oner           OneR (one tower, cross-modal mixups)
  --config experiments/emoji_contrastive_family.py:method=clip           the CLIP baseline (also siglip)
  --config experiments/emoji_contrastive_family.py:method=otter,size=test,steps=3   tiny, for tests

`steps` (default 1200, the README's shorter column) and `seed` set the budget and the repeat; `noise` (0–1) replaces
that share of the training captions with another concept's name (the caption-noise study).
"""
from vlm_jax.config import config_args, load_config

# method → (objective, loss preset of the two-tower config, loss settings on top, model settings on top)
METHODS = {
    "clip": ("contrastive", "clip", {}, {}),
    "siglip": ("contrastive", "siglip", {}, {}),
    # ALIGN (Jia et al. 2021): InfoNCE with label smoothing 0.1 and a learned temperature from 1 (the released
    # checkpoints' config and loss, as transformers' AlignModel carries them)
    "align": ("contrastive", "clip", {"contrastive_smoothing": 0.1}, {"temperature_init": 1.0}),
    "otter": ("otter", "clip", {}, {}),  # OTTER's own defaults (objectives/otter.py OTTER_DEFAULTS)
    "filip": ("filip", "clip", {}, {}),  # token-wise late interaction, CLIP's temperature
    "nlip": ("nlip", "clip", {}, {}),  # noise harmonisation (objectives/nlip.py NLIP_DEFAULTS); needs example ids
    # LaCLIP (Fan et al. 2023): CLIP with each caption rewritten with probability 0.5 (data.caption_rewrites: the
    # emoji's other names from packaged tables, in place of the paper's language-model rewrites)
    "laclip": ("contrastive", "clip", {}, {}),
    # Llip (Lavoie et al. 2024): 16 visual mixture tokens pooled per caption (objectives/llip.py), SigLIP's loss and
    # initial temperature and bias as in the paper
    "llip": ("llip", "siglip", {}, {"mixture_tokens": 16}),
    # KELIP (Ko & Gu 2022): bilingual captions, English or Korean names drawn per example (in the same templates),
    # and multi-crop (objectives/kelip.py: 2 local crops of half the side at 16 px), CLIP's loss; evaluated in both
    "kelip": ("kelip", "clip", {}, {}),
    # ZeroVL (Cui et al. 2022): each batch from one training style (noto / twitter / facebook, in proportion to their
    # sizes) and coin-flipping mixup (objectives/zerovl.py, β 0.1), CLIP's loss and temperature
    "zerovl": ("zerovl", "clip", {}, {}),
    # DeCLIP (Li et al. 2022): multi-view InfoNCE, SimSiam, MLM (a bidirectional text tower, so masked words see
    # both sides) and nearest-neighbour positives from a text queue (objectives/declip.py), CLIP's temperature
    "declip": ("declip", "clip", {}, {"text": {"causal": False}}),
    # ALIP (Yang et al. 2023): a second, clean caption per image (another name of the emoji, data.alt_captions, in
    # place of a captioner's) beside the raw one, with ALIP's sample and pair gates (objectives/alip.py)
    "alip": ("alip", "clip", {}, {}),
    # PyramidCLIP (Gao et al. 2022): global / local / object-level views against caption / summary / tags (the
    # names alone, data.name_texts; objects from composed scenes), six softened InfoNCE terms (objectives/pyramidclip.py)
    "pyramidclip": ("pyramidclip", "clip", {}, {}),
    # RA-CLIP (Xie et al. 2023): the Facebook drawings held out of training as the reference set; each image's 8
    # nearest reference images (pixel correlation) and their names (MiniLM) enrich its embedding (objectives/raclip.py)
    "raclip": ("raclip", "clip", {}, {}),
    # OneR (Jang et al. 2023): one transformer for patches, tokens and both in one sequence, as many blocks as the two
    # towers together, trained with image–text, cross-modal mixup and contextual mixup contrast (objectives/oner.py)
    "oner": ("oner", "clip", {}, {}),
}


def get_config(arg=None):
    """`arg`: method (METHODS), size=small|test, steps=N, batch=N, seed=N, noise=caption noise (0–1)."""
    arg = config_args(arg, method="clip", size="small", steps=1200, batch=256, seed=0, noise=0.0)
    if arg.method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {arg.method!r}")
    objective, preset, loss, model = METHODS[arg.method]
    c = load_config(f"experiments/emoji_two_tower.py:loss={preset},size={arg.size},steps={arg.steps},"
                    f"batch={arg.batch}")
    c.objective = objective
    c.seed = int(arg.seed)
    c.loss.update(loss)
    for key, value in model.items():  # sub-sections (e.g. the text tower) are updated, not replaced
        if isinstance(value, dict):
            c.model[key].update(value)
        else:
            c.model[key] = value
    if objective == "nlip":
        c.data.example_ids = True
    if arg.method == "laclip":
        c.data.caption_rewrites = 0.5
    if arg.method == "alip":
        c.data.alt_captions = True
    if arg.method == "pyramidclip":
        c.data.name_texts = True
    if arg.method == "raclip":
        c.data.train_styles = ("noto", "twitter")  # Facebook's drawings are the reference set
    if arg.method == "oner":  # one encoder sized like the image tower, with both towers' blocks
        image, text = c.model.image, c.model.text
        c.model.image = dict(width=image.width, depth=image.depth + text.depth, mlp_dim=image.mlp_dim,
                             num_heads=image.num_heads, patch_size=tuple(image.patch_size), dtype_mm=image.dtype_mm)
        c.model.text = dict(vocab_size=text.vocab_size, max_len=text.max_len)
    if arg.method == "zerovl":
        c.data.sampling = "sources"
    if arg.method == "kelip":
        c.data.languages = ("en", "ko")
        c.evals.languages = ["en", "ko"]
    if float(arg.noise):
        c.data.caption_noise = float(arg.noise)
    return c
