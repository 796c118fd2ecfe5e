"""Config loading, overrides and unknown-key errors."""
import ml_collections
import pytest

from vlm_jax.config import ConfigError, apply_overrides, load_config, split_cli_overrides
from vlm_jax.train.trainer import finalize_config

EXP = "experiments/emoji_two_tower.py"


def test_load_with_args_and_overrides():
    c = finalize_config(load_config(f"{EXP}:loss=siglip,steps=7"))
    assert c.loss.name == "sigmoid" and c.total_steps == 7 and c.model.bias_init == -10.0
    c = apply_overrides(c, ["optim.lr=3e-4", "total_steps=11", "progress=False", "mesh=[('data', 2)]"])
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert c.total_steps == 11 and c.progress is False
    # a string value quoted as a Python literal (as sweep files write overrides) loses its quotes; bare stays
    c = apply_overrides(c, ["model.image.pool_type='gap'", 'model.image.posemb="sincos2d"', "optim.name=sgd"])
    assert (c.model.image.pool_type, c.model.image.posemb, c.optim.name) == ("gap", "sincos2d", "sgd")


def test_unknown_override_names_valid_keys():
    c = finalize_config(load_config(EXP))
    with pytest.raises(ConfigError) as err:
        apply_overrides(c, ["optim.lrr=1"])
    msg = str(err.value)
    assert "optim.lrr" in msg and "Did you mean 'lr'" in msg and "weight_decay" in msg


def test_unknown_top_level_key_in_experiment_is_rejected():
    c = load_config(EXP)
    with c.unlocked():
        c.totl_steps = 3
    with pytest.raises(ConfigError, match="total_steps"):
        finalize_config(c)


def test_type_errors_are_clear():
    c = finalize_config(load_config(EXP))
    with pytest.raises(ConfigError, match="expected a number"):
        apply_overrides(c, ["optim.lr=fast"])


def test_cli_split():
    overrides, rest = split_cli_overrides(["--config", "x.py", "--config.lr=1", "--config.a.b", "2", "--workdir", "w"])
    assert overrides == ["lr=1", "a.b=2"] and rest == ["--config", "x.py", "--workdir", "w"]


def test_defaults_fill_missing_keys():
    c = finalize_config(ml_collections.ConfigDict({"total_steps": 5}))
    assert c.total_steps == 5 and c.optim.name == "adamw" and c.checkpoint.keep == 3


def test_unknown_model_field_names_valid_ones():
    from vlm_jax.train.objective import get_objective

    c = finalize_config(load_config(EXP + ":size=test"))
    with c.unlocked():
        c.model.image.widht = 3
    with pytest.raises(ConfigError, match="Did you mean 'width'"):
        get_objective(c)


@pytest.mark.parametrize("preset,bias,needle", [
    ("clip", -10.0, "bias_init is set but loss.name is 'infonce'"),
    ("clip", None, None),  # control: the CLIP preset as shipped
    ("siglip", None, "needs a learned logit bias"),
])
def test_logit_bias_only_with_the_sigmoid_loss(preset, bias, needle):
    """InfoNCE's full kernel takes label smoothing as its fourth argument: a learned bias must never reach it."""
    from vlm_jax.train.objective import get_objective

    c = finalize_config(load_config(f"{EXP}:size=test,loss={preset}"))
    with c.unlocked():
        c.model.bias_init = bias  # as an experiment file (or an imported SigLIP's fields) may set it
    if needle is None:
        get_objective(c)
        return
    with pytest.raises(ValueError, match=needle):
        get_objective(c)
    c2 = apply_overrides(finalize_config(load_config(f"experiments/emoji_siglip2.py:size=test")), ["loss.name=infonce"])
    with pytest.raises(ValueError, match="bias_init is set"):  # SigLIP 2 creates its bias by default
        get_objective(c2)
