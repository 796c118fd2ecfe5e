"""What every converter shares: a source state dict that must be used up exactly (`Source`), the result of an
import (`Imported`), and the tensor-layout maps between PyTorch modules and vlm_jax's layers."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

Tree = dict[str, Any]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly: unknown architecture, missing / unexpected keys, shapes."""


class Source:
    """A flat {name: array} state dict read key by key; `finish()` fails naming every key nothing read."""

    def __init__(self, tensors: dict[str, np.ndarray], origin: str):
        self.tensors, self.origin, self.used = tensors, origin, set()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors or name in self.used

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor `name` as float32 (of `shape`, when given)."""
        if name in self.used:
            raise KeyError(f"{name} read twice")
        if name not in self.tensors:
            near = sorted(k for k in self.tensors if k.rsplit(".", 1)[0] == name.rsplit(".", 1)[0])[:5]
            raise ConversionError(f"{self.origin}: missing tensor {name!r}" + (f" (found {near})" if near else ""))
        arr = np.asarray(self.tensors[name])
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise ConversionError(f"{self.origin}: tensor {name!r} has shape {tuple(arr.shape)}, expected "
                                  f"{tuple(shape)} from the checkpoint's config")
        self.used.add(name)
        del self.tensors[name]  # the caller's copy is the only one left: memory stays ~1x the checkpoint
        return arr.astype(np.float32, copy=False)

    def finish(self, ignore: Callable[[str], bool] = lambda name: False) -> None:
        """Raises naming the tensors no converter step read (an architecture this converter does not know)."""
        left = sorted(k for k in self.tensors if not ignore(k))
        if left:
            shown = ", ".join(left[:12]) + (f", … ({len(left)} in all)" if len(left) > 12 else "")
            raise ConversionError(f"{self.origin}: unexpected tensors (an architecture option this converter does "
                                  f"not support?): {shown}")


@dataclasses.dataclass
class Imported:
    """A converted two-tower model: TwoTower fields, parameter tree (NumPy float32), how images were normalised for
    the source library, the text side's token conventions, and which loss the model was trained with."""
    fields: dict[str, Any]
    params: Tree
    image_size: int
    text: dict[str, Any]  # max_len, vocab_size, pad_id, eos_id, bos_id (None when absent)
    loss: str  # "clip" (softmax) or "siglip" (sigmoid with bias)
    source: str  # "hf:CLIPModel", "open_clip:CLIP", …


def put(tree: Tree, path: str, value: np.ndarray) -> None:
    """tree["a"]["b"]["c"] = value for path "a/b/c"."""
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    if leaf in tree:
        raise KeyError(f"{path} set twice")
    tree[leaf] = value


def flat(tree: Tree, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a/b/c": leaf} of a nested dict."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


# ------------------------------------------------------------------------------------------ torch → vlm_jax

def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] → kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [out, in, kh, kw] → flax kernel [kh, kw, in, out]."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def attention(q: tuple, k: tuple, v: tuple, o: tuple, heads: int) -> Tree:
    """layers.Attention parameters from (weight [out, in], bias [out]) pairs of q/k/v and the output projection."""
    out: Tree = {}
    for name, (w, b) in (("query", q), ("key", k), ("value", v)):
        d_out, d_in = w.shape
        out[f"{name}_kernel"] = np.ascontiguousarray(w.T.reshape(d_in, heads, d_out // heads))
        out[f"{name}_bias"] = b.reshape(heads, d_out // heads)
    w, b = o
    out["out_kernel"] = np.ascontiguousarray(w.T.reshape(heads, w.shape[1] // heads, w.shape[0]))
    out["out_bias"] = b
    return out


def split_in_proj(w: np.ndarray, b: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """nn.MultiheadAttention's fused in_proj ([3d, d], [3d]) → (q, k, v) (weight, bias) pairs."""
    d = w.shape[0] // 3
    return tuple((w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3))  # type: ignore[return-value]


def norm(w: np.ndarray, b: np.ndarray) -> Tree:
    return {"scale": w, "bias": b}


def dense(w: np.ndarray, b: np.ndarray | None = None) -> Tree:
    return {"kernel": linear(w)} if b is None else {"kernel": linear(w), "bias": b}


# ------------------------------------------------------------------------------------------ vlm_jax → torch

def torch_linear(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.T)


def torch_conv(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def torch_attention(p: Tree) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"q"|"k"|"v"|"o": (weight [out, in], bias)} from layers.Attention parameters."""
    out = {}
    for short, name in (("q", "query"), ("k", "key"), ("v", "value")):
        kern = p[f"{name}_kernel"]
        out[short] = (np.ascontiguousarray(kern.reshape(kern.shape[0], -1).T), p[f"{name}_bias"].reshape(-1))
    wo = p["out_kernel"]
    out["o"] = (np.ascontiguousarray(wo.reshape(-1, wo.shape[-1]).T), p["out_bias"])
    return out


def require(fields: dict[str, Any], key: str, allowed: tuple, target: str) -> None:
    """Export guard: field `key` must be one of `allowed` for `target` to express the model exactly."""
    value = fields.get(key)
    if value not in allowed:
        raise ConversionError(f"{target} cannot express this model exactly: {key}={value!r} (it needs one of "
                              f"{list(allowed)})")


# ------------------------------------------------------------------------------------------ encoder stacks

# Per-block tensor names: HF's separate q/k/v projections, open_clip's (nn.MultiheadAttention) fused in_proj.
HF_BLOCK = dict(ln1="layer_norm1", ln2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2", attn="self_attn.", fused=False)
OPEN_CLIP_BLOCK = dict(ln1="ln_1", ln2="ln_2", fc1="mlp.c_fc", fc2="mlp.c_proj", attn="attn.", fused=True)


def _pair(src: Source, name: str, d_out: int, d_in: int) -> tuple[np.ndarray, np.ndarray]:
    return src.take(name + ".weight", (d_out, d_in)), src.take(name + ".bias", (d_out,))


def attention_in(src: Source, prefix: str, width: int, heads: int, fused: bool) -> Tree:
    """layers.Attention parameters from `prefix` + q_proj/k_proj/v_proj/out_proj (HF) or in_proj_* / out_proj."""
    if fused:
        qkv = split_in_proj(src.take(prefix + "in_proj_weight", (3 * width, width)),
                            src.take(prefix + "in_proj_bias", (3 * width,)))
    else:
        qkv = tuple(_pair(src, f"{prefix}{n}_proj", width, width) for n in "qkv")
    return attention(*qkv, _pair(src, prefix + "out_proj", width, width), heads)


def block_in(src: Source, prefix: str, width: int, mlp: int, heads: int, names: dict[str, Any]) -> Tree:
    """One pre-LN transformer block (layers.EncoderBlock parameters) from a PyTorch state dict."""
    ln1 = norm(src.take(f"{prefix}{names['ln1']}.weight", (width,)), src.take(f"{prefix}{names['ln1']}.bias", (width,)))
    ln2 = norm(src.take(f"{prefix}{names['ln2']}.weight", (width,)), src.take(f"{prefix}{names['ln2']}.bias", (width,)))
    fc1 = dense(*_pair(src, prefix + names["fc1"], mlp, width))
    fc2 = dense(*_pair(src, prefix + names["fc2"], width, mlp))
    return {"ln_attn": ln1, "attn": attention_in(src, prefix + names["attn"], width, heads, names["fused"]),
            "ln_mlp": ln2, "mlp": {"Dense_0": fc1, "Dense_1": fc2}}


def block_out(p: Tree, prefix: str, names: dict[str, Any]) -> dict[str, np.ndarray]:
    """The PyTorch state dict entries of one layers.EncoderBlock."""
    out = {f"{prefix}{names['ln1']}.weight": p["ln_attn"]["scale"], f"{prefix}{names['ln1']}.bias": p["ln_attn"]["bias"],
           f"{prefix}{names['ln2']}.weight": p["ln_mlp"]["scale"], f"{prefix}{names['ln2']}.bias": p["ln_mlp"]["bias"]}
    for ours, theirs in (("Dense_0", names["fc1"]), ("Dense_1", names["fc2"])):
        out[f"{prefix}{theirs}.weight"] = torch_linear(p["mlp"][ours]["kernel"])
        out[f"{prefix}{theirs}.bias"] = p["mlp"][ours]["bias"]
    out.update(attention_out(p["attn"], prefix + names["attn"], names["fused"]))
    return out


def attention_out(p: Tree, prefix: str, fused: bool) -> dict[str, np.ndarray]:
    """PyTorch attention entries (fused in_proj or q/k/v_proj, and out_proj) of layers.Attention parameters."""
    t = torch_attention(p)
    out = {f"{prefix}out_proj.weight": t["o"][0], f"{prefix}out_proj.bias": t["o"][1]}
    if fused:
        out[f"{prefix}in_proj_weight"] = np.concatenate([t[n][0] for n in "qkv"])
        out[f"{prefix}in_proj_bias"] = np.concatenate([t[n][1] for n in "qkv"])
    else:
        for n in "qkv":
            out[f"{prefix}{n}_proj.weight"], out[f"{prefix}{n}_proj.bias"] = t[n]
    return out


def encoder_in(src: Source, prefix: str, depth: int, width: int, mlp: int, heads: int,
               names: dict[str, Any]) -> Tree:
    """layers.Encoder blocks ("encoderblock_i"), without the final norm, from `prefix` + "{i}."."""
    return {f"encoderblock_{i}": block_in(src, f"{prefix}{i}.", width, mlp, heads, names) for i in range(depth)}


def encoder_out(p: Tree, prefix: str, names: dict[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    p = unscan(p)
    depth = sum(1 for k in p if k.startswith("encoderblock_"))
    for i in range(depth):
        out.update(block_out(p[f"encoderblock_{i}"], f"{prefix}{i}.", names))
    return out


def unscan(p: Tree) -> Tree:
    """An Encoder's parameters with a scanned stack ("encoderblock", leading depth axis) as per-layer
    "encoderblock_<i>" entries (views, no copy)."""
    if "encoderblock" not in p:
        return p
    stacked = flat(p["encoderblock"])
    depth = next(iter(stacked.values())).shape[0]
    out = {k: v for k, v in p.items() if k != "encoderblock"}
    for i in range(depth):
        block: Tree = {}
        for path, arr in stacked.items():
            put(block, path, arr[i])
        out[f"encoderblock_{i}"] = block
    return out


def vit_depth(p: Tree) -> int:
    return sum(1 for k in unscan(p) if k.startswith("encoderblock_"))


def text_for_export(text: dict[str, Any], eos_id: int | None) -> dict[str, Any]:
    """Text-tower fields in the form the libraries know. A causal tower sees no position after the one it pools,
    so when every text is its ids, then EOS, then only pads (how vlm_jax's tokenizers and CLIP's frame text),
    pooling at the last non-pad token is pooling at the first EOS, and the pad mask changes nothing."""
    text = dict(text)
    if not text.get("causal", True):
        return text
    if text.get("pool_type") == "last":
        if eos_id is None:
            raise ConversionError("the text tower pools at the last token; exporting it as EOS pooling needs the "
                                  "tokenizer's EOS id, which this run does not record")
        text.update(pool_type="eos", eos_id=int(eos_id))
    if text.get("pool_type") in ("eos", "argmax"):
        text["pad_mask"] = False
    return text


def for_export(model: Imported) -> Imported:
    """`model` as exporters read it: every tower field present (the module's default where the model leaves it
    out) and both encoder stacks per-layer."""
    from vlm_jax.models.text import TextTransformer
    from vlm_jax.models.vit import ViT

    def defaults(module: type) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(module)
                if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}

    fields = dict(model.fields, image={**defaults(ViT), "num_classes": model.fields.get("embed_dim"),
                                       **model.fields["image"]},
                  text={**defaults(TextTransformer), **model.fields["text"]})
    params = dict(model.params)
    params["img"] = dict(params["img"], Transformer=unscan(params["img"]["Transformer"]))
    params["txt"] = dict(params["txt"], Encoder_0=unscan(params["txt"]["Encoder_0"]))
    return dataclasses.replace(model, fields=fields, params=params)
