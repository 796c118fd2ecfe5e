"""Captioning emoji through the project's frozen language model (issue 32's bridges): a ViT and a mapper train, the
LM of an `experiments/text_lm.py` run is loaded (`init_from`, its `decoder/…`) and frozen (`optim.freeze`: no
update and no gradient). Captions use the LM's tokenizer. Evaluated like PrefixLM / CapPa on held-out OpenMoji.

  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm                   ClipCap's MLP mapper (4 embeddings)
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=frozen     Frozen: a linear map to 2 embeddings
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=clipcap_transformer
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=llava      every ViT token through a 2-layer MLP
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=flamingo   Perceiver resampler + gated cross-attention
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=flamingo,interleave=3
        Flamingo trained on interleaved sequences of 3 image–caption pairs (batch counts pairs: 85 sequences)
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=visualgpt  self-resurrecting gated cross-attention
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=blip2,qformer=runs/blip2
        BLIP-2 stage 2: the stage-1 run's Q-Former (trained on) and image encoder (frozen), queries into the LM
  --config experiments/emoji_frozen_lm.py:lm=runs/text_lm,bridge=flamingo,data=multitask
        any bridge on experiments/multitask_pali.py's prompted tasks (the prompt before the answer), exact match
  --config experiments/emoji_frozen_lm.py:lm=<workdir>,size=test            tiny (the LM: text_lm.py:size=test)

The LM's decoder and position table are read from `text_lm.py` at the same size: the LM run must use that config.
"""
from pathlib import Path

from vlm_jax.config import config_args, load_config, small_run
from vlm_jax.data.ops import STYLE_AUGMENT

IMAGES = {"test": dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
          "small": dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8))}
BRIDGES = {  # model.mapper
    "frozen": dict(kind="linear", prefix_len=2),  # Tsimpoukelli et al. 2021
    "clipcap": dict(kind="mlp", prefix_len=4),  # Mokady et al. 2021 (10 embeddings for GPT-2; 4 at this scale)
    "clipcap_transformer": dict(kind="transformer", prefix_len=4, depth=2, num_heads=4),
    "llava": dict(kind="tokens"),  # LLaVA-1.5's projector
}
OWN_OBJECTIVE = {  # bridges with an objective of their own: its model keys
    "flamingo": dict(resampler=dict(num_latents=8, depth=2), gated_every=1),  # Alayrac et al. 2022 (3B: every block)
    "visualgpt": dict(srau_threshold=0.2),  # Chen et al. 2022's τ
}


def get_config(arg=None):
    """`arg`: lm=<workdir of a text_lm run> (required), bridge=frozen|clipcap|clipcap_transformer|llava|flamingo|
    visualgpt|blip2 (with qformer=<workdir of an emoji_blip2.py run of the same size>), size=small|test, steps=N, batch=N
    (image–caption pairs per step), seed=N, interleave=N (flamingo: pairs per training sequence), data=emoji|multitask
    (emoji captions, or multitask_pali.py's prompted tasks in the LM's tokenizer)."""
    arg = config_args(arg, lm="", bridge="clipcap", size="small", steps=1200, batch=256, seed=0, qformer="",
                      interleave=1, data="emoji")
    if arg.data not in ("emoji", "multitask"):
        raise ValueError(f"data must be 'emoji' or 'multitask', got {arg.data!r}")
    if not arg.lm:
        raise ValueError("pass lm=<workdir of an experiments/text_lm.py run of the same size> (the frozen LM)")
    if arg.bridge not in (*BRIDGES, *OWN_OBJECTIVE, "blip2"):
        raise ValueError(f"bridge must be one of {sorted(BRIDGES) + sorted(OWN_OBJECTIVE) + ['blip2']}, got "
                         f"{arg.bridge!r}")
    if (arg.bridge == "blip2") != bool(arg.qformer):
        raise ValueError("qformer=<workdir of an emoji_blip2.py run> goes with bridge=blip2, and only with it")
    if int(arg.interleave) != 1 and arg.bridge != "flamingo":
        raise ValueError(f"interleave={arg.interleave}: interleaved sequences are Flamingo's (bridge=flamingo)")
    lm = load_config(f"{Path(__file__).with_name('text_lm.py')}:size={arg.size}")  # the LM run's own config
    c = small_run(arg.bridge if arg.bridge in OWN_OBJECTIVE else "vision_prefix", int(arg.steps),
                  int(arg.batch) // int(arg.interleave))  # sequences per step
    c.seed = int(arg.seed)
    c.data = dict(name="emoji", data_dir="", image_size=32, text_len=16, tokenizer="text_corpus",
                  train_styles=("noto", "twitter", "facebook"), sampling="examples", augment=STYLE_AUGMENT)
    c.model = dict(image=dict(posemb="learn", **IMAGES[arg.size]), lm_max_len=lm.data.text_len,
                   decoder=dict(lm.model.decoder),
                   **OWN_OBJECTIVE.get(arg.bridge, dict(mapper=BRIDGES.get(arg.bridge, {}))))
    if arg.bridge == "flamingo":
        c.model.interleave = int(arg.interleave)
    if arg.data == "multitask":  # the prompt (16 tokens) and the answer (32) fill the LM's 48 positions
        pali = load_config(f"{Path(__file__).with_name('multitask_pali.py')}:size={arg.size}")
        c.data = dict(pali.data, tokenizer="text_corpus")
    c.init_from = dict(workdir=str(arg.lm), include="^decoder/")
    c.optim.freeze = "^decoder/(?!.*(gated_xattn|srau))"  # the LM; Flamingo's / VisualGPT's layers inside it train
    if arg.bridge == "blip2":
        stage1 = load_config(f"{Path(__file__).with_name('emoji_blip2.py')}:size={arg.size}")
        c.model.image = dict(stage1.model.image)
        c.model.mapper = dict(kind="qformer", qformer=dict(stage1.model.qformer))
        c.init_from.more = [dict(workdir=str(arg.qformer), include="^img/|^qformer/(?!embedding|pos_embedding)",
                                 rename=[("qformer/", "mapper/qformer/")])]
        c.optim.freeze = "^decoder/|^img/"  # BLIP-2 freezes the image encoder and the LM; the Q-Former trains on
    # the scoring classifier runs the 7.3M-parameter LM once per image × class prompt: 50k pairs per set (CoCa's
    # and PrefixLM's configs score 500k with their much smaller decoders): a tenth of the default's cost
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"], scoring_pairs=50_000)
    if arg.size == "test":
        c.log_every = 1
        c.evals = dict(batch_size=64, sets=["emoji"], scoring_pairs=2048, examples=1)
    if arg.data == "multitask":  # evaluated per task (the data's own sets)
        c.evals = dict(c.evals, sets=[], max_items=16 if arg.size == "test" else 0)
    return c
