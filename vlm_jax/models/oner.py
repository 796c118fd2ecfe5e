"""OneR (Jang et al. 2023): one transformer, shared by image patches, text tokens and sequences that hold both, and
one projection into a single embedding space; a learned [CLS] token is the output of every sequence."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.two_tower import l2_normalize, temperature_and_bias
from vlm_jax.models.vit import ViT

Array = jax.Array

IMAGE_KEYS = ("variant", "width", "depth", "mlp_dim", "num_heads", "patch_size", "dtype_mm")
TEXT_KEYS = ("vocab_size", "max_len", "pad_id")


def patchify(image: Array, patch: tuple[int, int]) -> Array:
    """[B, H, W, C] → [B, (H/ph)·(W/pw), ph·pw·C], patches in row-major order."""
    b, h, w, c = image.shape
    ph, pw = patch
    x = image.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


class OneR(nn.Module):
    """Modality-specific embeddings (patch projection + 2-D grid positions, token table + positions, a learned type
    vector per modality) into one pre-LN encoder over [CLS] + tokens, whose [CLS] output is projected to
    `embed_dim` and normalised. `image`: the encoder's size (ViT fields), `text`: vocab_size, max_len, pad_id."""
    image: dict[str, Any]
    text: dict[str, Any]
    embed_dim: int
    image_size: int
    temperature_init: float = 10.0

    def setup(self):
        c = ViT(**{k: v for k, v in self.image.items() if k != "dtype_mm"})._cfg()
        self.patch, self.width = tuple(c["patch_size"]), c["width"]
        self.num_patches = (self.image_size // self.patch[0]) * (self.image_size // self.patch[1])
        dt = self.image.get("dtype_mm", "float32")
        w = self.width
        self.patch_embed = layers.dense(w, (None, "embed"), dt, out_dtype="float32")
        emb_init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed"))
        self.token_embed = nn.Embed(int(self.text["vocab_size"]), w, embedding_init=emb_init)
        pos = nn.with_logical_partitioning(nn.initializers.normal(stddev=w ** -0.5), (None, None, "embed"))
        self.image_pos = self.param("image_pos", pos, (1, self.num_patches, w), jnp.float32)
        self.text_pos = self.param("text_pos", pos, (1, int(self.text.get("max_len", 16)), w), jnp.float32)
        kind = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed"))
        self.modality = self.param("modality", kind, (2, w), jnp.float32)  # 0: image, 1: text
        self.cls = self.param("cls", kind, (1, w), jnp.float32)
        self.encoder = layers.Encoder(depth=c["depth"], mlp_dim=c["mlp_dim"], num_heads=c["num_heads"], dtype_mm=dt)
        self.head = layers.dense(self.embed_dim, ("embed", None), dt, out_dtype="float32")
        self.t_and_b = temperature_and_bias(self, self.temperature_init, None)  # InfoNCE: no logit bias

    def image_tokens(self, image: Array) -> Array:
        """[B, N, W] embedded patches of [B, H, W, C] images."""
        return self.patch_embed(patchify(image, self.patch)) + self.image_pos + self.modality[0]

    def text_tokens(self, text: Array) -> tuple[Array, Array]:
        """([B, L, W] embedded tokens, [B, L] non-pad positions) of right-padded token ids."""
        x = self.token_embed(text).astype(jnp.float32) + self.text_pos[:, :text.shape[1]] + self.modality[1]
        return x, text != int(self.text.get("pad_id", 0))

    def encode(self, tokens: Array, valid: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Unit embeddings [B, E] of token sequences [B, N, W] whose `valid` [B, N] positions are visible as keys
        (the rest are never attended to), and {"pre_logits": the [CLS] output, "encoded": the sequence's outputs}."""
        b = tokens.shape[0]
        x = jnp.concatenate([jnp.broadcast_to(self.cls[None], (b, 1, self.width)), tokens], axis=1)
        keys = jnp.concatenate([jnp.ones((b, 1), bool), valid.astype(bool)], axis=1)
        n = x.shape[1]
        x, _ = self.encoder(x, jnp.broadcast_to(keys[:, None, None, :], (b, 1, n, n)), train=train)
        return l2_normalize(self.head(x[:, 0])), {"pre_logits": x[:, 0], "encoded": x[:, 1:]}

    def temperature(self) -> dict[str, Array]:
        """{"t": exp(log t)}."""
        return {"t": self.t_and_b["t"]}

    def __call__(self, image: Array | None, text: Array | None, *,
                 train: bool = False) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        """Each modality alone through the one tower: ((zimg, ztxt), aux with t and the image's features)."""
        aux: dict[str, Any] = dict(self.t_and_b)
        zimg = ztxt = None
        if image is not None:
            tokens = self.image_tokens(image)
            zimg, img = self.encode(tokens, jnp.ones(tokens.shape[:2], bool), train)
            aux.update({f"img/{k}": v for k, v in img.items()})
        if text is not None:
            ztxt, _ = self.encode(*self.text_tokens(text), train)
        return (zimg, ztxt), aux
