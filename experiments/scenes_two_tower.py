"""CLIP / SigLIP on labelled emoji scenes (issue 33; data "scenes", `vlm_jax/data/scene_pairs.py`): 1–3 copies of one
concept and one of another (perhaps recoloured) plus a distractor, captioned with the count, the relation and the
colour, drawn afresh every step from the seen concepts' training-style drawings; evaluated on held-out scenes of
the OpenMoji drawings: image ↔ caption retrieval and the compositional probes (count, relation, attribute
binding, word order; docs/probes.md). The towers are experiments/emoji_two_tower.py's.

  --config experiments/scenes_two_tower.py                 CLIP, 1,200 steps
  --config experiments/scenes_two_tower.py:loss=siglip     SigLIP
  --config experiments/scenes_two_tower.py:size=test       tiny, for tests
"""
from pathlib import Path

from vlm_jax.config import config_args, load_config

TEXT_LEN = 32  # scene captions take 17 pieces (median) to 30 (longest of 500 held-out), EOS included


def get_config(arg=None):
    """`arg`: loss=clip|siglip, size=small|test, steps=N, batch=N, seed=N."""
    arg = config_args(arg, loss="clip", size="small", steps=1200, batch=256, seed=0)
    c = load_config(f"{Path(__file__).with_name('emoji_two_tower.py')}:loss={arg.loss},size={arg.size},"
                    f"steps={arg.steps},batch={arg.batch}")
    c.seed = int(arg.seed)
    c.data = dict(name="scenes", data_dir="", image_size=c.data.image_size, text_len=TEXT_LEN)
    c.model.text.max_len = TEXT_LEN
    c.evals.sets = ["scenes"]
    if arg.size == "test":
        c.data.eval_scenes = 48
    return c
