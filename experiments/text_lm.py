"""A small decoder-only language model on the offline text corpus (WordNet glosses, Tux Paint descriptions in every
language, CLDR emoji names: `vlm_jax/data/text_corpus.py`), the frozen LM of issue 32's bridges; held-out
perplexity on the corpus's test split.

  --config experiments/text_lm.py                 4 blocks of width 256
  --config experiments/text_lm.py:size=test       tiny model for tests
"""
import ml_collections

from vlm_jax.config import config_args

SIZES = {  # decoder width, depth, mlp, heads
    "test": (32, 1, 64, 2),
    "small": (256, 4, 1024, 4),
}


def get_config(arg=None):
    """`arg`: size=small|test, steps=N, batch=N, seed=N."""
    arg = config_args(arg, size="small", steps=3000, batch=128, seed=0)
    width, depth, mlp, heads = SIZES[arg.size]
    c = ml_collections.ConfigDict()
    c.objective = "lm"
    c.seed = int(arg.seed)
    c.total_steps = int(arg.steps)
    c.batch_size = int(arg.batch)
    c.log_every = 50
    c.eval_every = 0
    c.data = dict(name="text_corpus", data_dir="", text_len=48)
    c.model = dict(decoder=dict(width=width, depth=depth, mlp_dim=mlp, num_heads=heads))
    c.loss = dict(label_smoothing=0.0)
    c.optim = dict(name="adamw", lr=1e-3, b2=0.98, weight_decay=0.1, warmup_steps=min(200, int(arg.steps) // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=max(int(arg.steps) // 4, 1), keep=2)
    c.evals = dict(batch_size=256, samples=4, prompt_len=3)
    if arg.size == "test":
        c.log_every = 1
        c.data.eval_sentences = 512
        c.evals = dict(batch_size=128, samples=2, prompt_len=3)
    return c
