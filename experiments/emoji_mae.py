"""MAE on the emoji drawings (He et al. 2022), with the image tower of experiments/emoji_two_tower.py so its weights
start a contrastive run (`init_from`). Evaluated by linear probe and kNN (cross-style emoji concepts, Fashion-MNIST)
and held-out reconstruction error.

  --config experiments/emoji_mae.py                        the README run (4.6k steps: the compute of 1.2k CLIP steps, on its data)
  --config experiments/emoji_mae.py:size=test              tiny model for tests
"""
from pathlib import Path

from vlm_jax.config import config_args, load_config

DECODERS = {  # MAE's decoder is light: here half the encoder's width and depth
    "test": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "small": dict(width=64, depth=2, mlp_dim=256, num_heads=4),
}


def get_config(arg=None):
    """`arg`: size=small|test, steps=N, batch=N, ratio=mask ratio."""
    arg = config_args(arg, size="small", steps=4600, batch=256, ratio=0.75)
    two_tower = Path(__file__).with_name("emoji_two_tower.py")
    c = load_config(f"{two_tower}:size={arg.size},steps={arg.steps},batch={arg.batch}")
    c.objective = "mae"
    image = dict(c.model.image)
    image.pop("pool_type")  # MAE encodes tokens; the contrastive run's pooling head starts fresh
    c.model = dict(image=image, decoder=DECODERS[arg.size])
    c.loss = dict(mask_ratio=arg.ratio, norm_pix=True)  # the paper's defaults
    c.optim.b2 = 0.95  # He et al. 2022
    c.optim.weight_decay = 0.05
    c.evals = dict(batch_size=256, probe_sets=["emoji", "fashion_mnist"], recon_sets=["emoji"])
    if arg.size == "test":
        c.evals.batch_size = 64
    return c
