"""Issue 32's comparison: the bridges of experiments/emoji_frozen_lm.py on one frozen LM, at the emoji captioning
budget (1,200 steps, batch 256), by seed. The LM run (`lm=<workdir>`, an experiments/text_lm.py run) is an
argument: it is not part of the sweep.

  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/frozen_bridges.py:lm=runs/text_lm_1000 run \\
      --dir benchmarks/studies/frozen_bridges_runs
  scripts/vlm python benchmarks/studies/frozen_bridges_table.py benchmarks/studies/frozen_bridges_runs

`:bridges=clipcap+flamingo` restricts the bridges, `:seeds=0+1` the seeds, `:quick` trains 60 steps,
`:data=multitask` trains and evaluates on the prompted tasks (exact match; its own --dir). BLIP-2's
second stage needs a stage-1 run (`qformer=<workdir>`); without one it is left out.
"""
from vlm_jax.config import config_args

BRIDGES = ("clipcap", "frozen", "flamingo", "visualgpt", "llava", "clipcap_transformer", "blip2")


def get_sweep(arg=None):
    """`arg`: lm=<LM workdir> (required), bridges=a+b, seeds=0+1+2, quick, qformer=<stage-1 workdir>,
    data=emoji|multitask."""
    arg = config_args(arg, lm="", bridges="+".join(BRIDGES[:-1]), seeds="0+1+2", quick=False, qformer="",
                      data="emoji")
    if not arg.lm:
        raise ValueError("pass lm=<workdir of an experiments/text_lm.py run>")
    bridges = [b for b in str(arg.bridges).split("+") if b]
    unknown = sorted(set(bridges) - set(BRIDGES))
    if unknown:
        raise ValueError(f"unknown bridges {unknown}; valid: {list(BRIDGES)}")
    if "blip2" in bridges and not arg.qformer:
        raise ValueError("bridge blip2 needs qformer=<workdir of an experiments/emoji_blip2.py run>")
    steps = 60 if arg.quick else 1200
    extra = f",qformer={arg.qformer}" if arg.qformer else ""
    data = f",data={arg.data}" if arg.data != "emoji" else ""
    return dict(
        base="experiments/emoji_frozen_lm.py",
        axes=dict(seed={s: {"arg": f"seed={s}"} for s in str(arg.seeds).split("+")},
                  bridge={b: {"arg": f"lm={arg.lm},bridge={b},steps={steps}{data}" + (extra if b == "blip2" else "")}
                          for b in bridges}),
    )
