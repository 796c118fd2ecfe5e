"""big_vision SigLIP checkpoints (`.npz` of "params/img/…", "params/txt/…", "params/t", "params/b"; per-layer
`encoderblock_<i>` or scanned `encoderblock` layouts). big_vision is flax too: the tensors keep their layouts and
only their names change. The architecture is read off the shapes (big_vision npz files carry no config)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from vlm_jax.interop import posemb
from vlm_jax.interop.layout import ConversionError, Imported, Source, Tree

BLOCK = {"LayerNorm_0": "ln_attn", "LayerNorm_1": "ln_mlp", "MlpBlock_0": "mlp",
         "MultiHeadDotProductAttention_0": "attn"}
HEAD = {"LayerNorm_0": "ln", "MlpBlock_0": "mlp", "MultiHeadDotProductAttention_0": "attn"}
ATTN = ("query", "key", "value", "out")


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: not a readable .npz ({exc})") from exc
    out = {}
    for k, v in raw.items():
        k = k[len("params/"):] if k.startswith("params/") else k
        out[k] = v
    return _unscan(out)


def _unscan(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scanned `…/encoderblock/<name>` [depth, …] → per-layer `…/encoderblock_<i>/<name>`."""
    out = {}
    for k, v in tensors.items():
        m = re.match(r"(.*)/encoderblock/(.*)", k)
        if m:
            for i in range(v.shape[0]):
                out[f"{m.group(1)}/encoderblock_{i}/{m.group(2)}"] = v[i]
        else:
            out[k] = v
    return out


def _sub(src: Source, prefix: str, names: dict[str, str]) -> Tree:
    """The tensors under `prefix` renamed (big_vision module → vlm_jax module), attention kernels flattened to
    layers.Attention's `<name>_kernel` / `<name>_bias`."""
    tree: Tree = {}
    for key in sorted(k for k in src.tensors if k.startswith(prefix)):
        parts = key[len(prefix):].split("/")
        module = names.get(parts[0])
        if module is None:
            continue  # left for Source.finish to name
        arr = src.take(key)
        if module == "attn" and parts[1] in ATTN:
            tree.setdefault("attn", {})[f"{parts[1]}_{parts[2]}"] = arr
        elif module == "mlp":
            tree.setdefault("mlp", {}).setdefault(parts[1], {})[parts[2]] = arr
        else:
            tree.setdefault(module, {})[parts[1]] = arr
    return tree


def _encoder(src: Source, prefix: str) -> tuple[Tree, int]:
    depth = 0
    while f"{prefix}encoderblock_{depth}/LayerNorm_0/scale" in src:
        depth += 1
    if depth == 0:
        raise ConversionError(f"{src.origin}: no transformer blocks under {prefix!r}")
    enc: Tree = {f"encoderblock_{i}": _sub(src, f"{prefix}encoderblock_{i}/", BLOCK) for i in range(depth)}
    enc["encoder_norm"] = {"scale": src.take(prefix + "encoder_norm/scale"), "bias": src.take(prefix + "encoder_norm/bias")}
    return enc, depth


def read(path: str | Path, image_size: int | None = None) -> Imported:
    """A big_vision SigLIP .npz as vlm_jax TwoTower fields and parameters."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise ConversionError(f"{path}: expected one .npz file, found {[p.name for p in found]}")
        path = found[0]
    src = Source(_load(path), str(path))
    if "img/MAPHead_0/probe" not in src:
        raise ConversionError(f"{path}: no img/MAPHead_0/probe; only big_vision SigLIP (MAP-pooled) two-tower "
                              f"checkpoints are supported")
    kernel = src.take("img/embedding/kernel")
    p, _, channels, d = kernel.shape
    img: Tree = {"embedding": {"kernel": kernel, "bias": src.take("img/embedding/bias", (d,))}}
    pos = src.take("img/pos_embedding")
    grid = int(round(np.sqrt(pos.shape[1])))
    if grid * grid != pos.shape[1] or channels != 3:
        raise ConversionError(f"{path}: position table of {pos.shape[1]} entries is not a square grid")
    size = grid * p
    new = image_size or size
    if new != size:  # big_vision's own resample_posemb: scipy.ndimage.zoom, order 1, on the square grid
        if new % p:
            raise ConversionError(f"{path}: image size {new} is not a multiple of the patch size {p}")
        pos = posemb.zoom_grid(pos.reshape(grid, grid, d), (new // p, new // p)).reshape(1, -1, d)
    img["pos_embedding"] = pos
    img["Transformer"], depth = _encoder(src, "img/Transformer/")
    img["MAPHead_0"] = _sub(src, "img/MAPHead_0/", HEAD)
    img["MAPHead_0"]["probe"] = src.take("img/MAPHead_0/probe", (1, 1, d))
    heads = img["Transformer"]["encoderblock_0"]["attn"]["query_kernel"].shape[1]
    mlp = img["Transformer"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"].shape[1]
    img_fields: dict[str, Any] = dict(width=d, depth=depth, mlp_dim=mlp, num_heads=heads, patch_size=(p, p),
                                      posemb="learn", pool_type="map", act="gelu_tanh", ln_eps=1e-6)
    if "img/head/kernel" in src:
        img["head"] = {"kernel": src.take("img/head/kernel"), "bias": src.take("img/head/bias")}
        embed = img["head"]["kernel"].shape[1]
    else:
        img_fields["num_classes"], embed = None, d
    emb = src.take("txt/Embed_0/embedding")
    vocab, td = emb.shape
    tpos = src.take("txt/pos_embedding")
    txt: Tree = {"embedding": {"embedding": emb}, "pos_embedding": tpos}
    txt["Encoder_0"], tdepth = _encoder(src, "txt/Encoder_0/")
    txt["head"] = {"kernel": src.take("txt/head/kernel"), "bias": src.take("txt/head/bias")}
    if txt["head"]["kernel"].shape[1] != embed:
        raise ConversionError(f"{path}: text embedding width {txt['head']['kernel'].shape[1]} differs from the image "
                              f"embedding width {embed}")
    tblock = txt["Encoder_0"]["encoderblock_0"]
    txt_fields = dict(vocab_size=vocab, width=td, depth=tdepth, mlp_dim=tblock["mlp"]["Dense_0"]["kernel"].shape[1],
                      num_heads=tblock["attn"]["query_kernel"].shape[1], max_len=tpos.shape[1], causal=False,
                      pool_type="final", pad_mask=False, act="gelu_tanh", ln_eps=1e-6, pad_id=1)
    params = {"img": img, "txt": txt, "t": src.take("t").reshape(()), "b": src.take("b").reshape(())}
    src.finish()
    fields = dict(image=img_fields, text=txt_fields, embed_dim=embed, text_tower="transformer", bias_init=-10.0)
    info = dict(max_len=int(tpos.shape[1]), vocab_size=vocab, pad_id=1, eos_id=1, bos_id=None)
    return Imported(fields, params, new, info, "siglip", "big_vision:SigLIP")
