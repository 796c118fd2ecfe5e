"""The tokenizers that come with released checkpoints, read from their own files, offline: an HF `tokenizer.json`
(the `tokenizers` library: HF CLIP and any fast tokenizer), OpenAI CLIP's BPE as open_clip's SimpleTokenizer
applies it (a `bpe_simple_vocab*.txt.gz` merges file), and SigLIP's SentencePiece model as transformers'
SiglipTokenizer applies it (`spiece.model`). Each gives int32 [N, max_len] ids framed the way its library frames
them, and is checked against the library's own output (tests/test_checkpoint_text.py)."""
from __future__ import annotations

import gzip
import html
import json
import re
import string
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("hf_json", "clip_bpe", "siglip_spm")
CLEANS = ("", "whitespace", "lower", "canonicalize")  # open_clip's text cleaning before an HF tokenizer
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def detect(folder: str | Path) -> tuple[str, Path] | None:
    """(kind, file) of the tokenizer a checkpoint folder carries, or None."""
    folder = Path(folder)
    for kind, pattern in (("hf_json", "tokenizer.json"), ("siglip_spm", "spiece.model"),
                          ("clip_bpe", "bpe_simple_vocab*.txt.gz")):
        found = sorted(folder.glob(pattern))
        if found:
            return kind, found[0]
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


class CheckpointTokenizer:
    """Batch encoder for a checkpoint's tokenizer: `encode(texts) -> int32 [N, max_len]`."""

    def __init__(self, kind: str, path: str | Path, max_len: int, clean: str = ""):
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        if clean not in CLEANS:
            raise ValueError(f"tokenizer clean must be one of {CLEANS}, got {clean!r}")
        self.kind, self.path, self.max_len, self.clean = kind, Path(path), int(max_len), clean
        if not self.path.exists():
            raise FileNotFoundError(f"tokenizer file {self.path} does not exist")
        getattr(self, f"_load_{kind}")()

    # -------------------------------------------------------------------------------------- HF tokenizer.json
    def _load_hf_json(self) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(self.path))
        config_path = self.path.with_name("tokenizer_config.json")
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_id = self._tok.token_to_id(pad) if pad else 0
        if self.pad_id is None:
            raise ValueError(f"{config_path}: pad_token {pad!r} is not in the vocabulary")
        self._tok.enable_truncation(self.max_len)
        self._tok.enable_padding(length=self.max_len, pad_id=self.pad_id, pad_token=pad or "[PAD]")
        self.vocab_size = self._tok.get_vocab_size()

    def _encode_hf_json(self, texts: list[str]) -> np.ndarray:
        return np.asarray([e.ids for e in self._tok.encode_batch(texts)], np.int32).reshape(len(texts), self.max_len)

    # -------------------------------------------------------------------------------------- OpenAI CLIP BPE
    def _load_clip_bpe(self) -> None:
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        lines = gzip.open(self.path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]  # SimpleTokenizer's slice
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        ids = {tok: i for i, tok in enumerate(vocab)}
        tok = Tokenizer(models.BPE(vocab=ids, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="",
                                   fuse_unk=False))
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT.replace(r"<\|startoftext\|>|<\|endoftext\|>",
                                                          "<start_of_text>|<end_of_text>")),
                                 behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tok, self.pad_id = tok, 0
        self.sot, self.eot = ids["<start_of_text>"], ids["<end_of_text>"]
        self.vocab_size = len(vocab)

    def _encode_clip_bpe(self, texts: list[str]) -> np.ndarray:
        """open_clip's SimpleTokenizer: ftfy + double HTML unescape, whitespace collapsed, lower case; then
        [sot] + ids + [eot] cut to max_len (eot last), 0-padded."""
        import ftfy

        clean = [re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(t))).strip()).strip() for t in texts]
        out = np.zeros((len(texts), self.max_len), np.int32)
        for i, enc in enumerate(self._tok.encode_batch(clean, add_special_tokens=False)):
            ids = [self.sot, *enc.ids][:self.max_len - 1] + [self.eot]
            out[i, :len(ids)] = ids
        return out

    # -------------------------------------------------------------------------------------- SigLIP SentencePiece
    def _load_siglip_spm(self) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        config_path = self.path.with_name("tokenizer_config.json")
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
        self.lower = bool(config.get("do_lower_case", True))
        self.eos = self._sp.piece_to_id(config.get("eos_token", "</s>"))
        self.pad_id = self._sp.piece_to_id(config.get("pad_token", "</s>"))
        self.vocab_size = self._sp.get_piece_size()

    def _encode_siglip_spm(self, texts: list[str]) -> np.ndarray:
        """transformers' SiglipTokenizer: lower case, punctuation removed, whitespace collapsed; ids cut to
        max_len - 1, then eos, padded with the pad id."""
        out = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        drop = str.maketrans("", "", string.punctuation)
        for i, text in enumerate(texts):
            text = text.lower() if self.lower else text
            text = re.sub(r"\s+", " ", text.translate(drop)).strip()
            ids = self._sp.encode(text)[:self.max_len - 1] + [self.eos]
            out[i, :len(ids)] = ids
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        """int32 [N, max_len] ids, framed and padded as the tokenizer's library does."""
        texts = [clean_text(t, self.clean) for t in texts] if self.clean else list(texts)
        return getattr(self, f"_encode_{self.kind}")(texts)


def clean_text(text: str, how: str) -> str:
    """open_clip's cleaning before an HF tokenizer: ftfy and a double HTML unescape, then "whitespace" collapses
    runs of whitespace, "lower" also lower-cases, "canonicalize" (SigLIP's, from big_vision) turns underscores into
    spaces, drops ASCII punctuation, lower-cases and collapses whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if how == "canonicalize":
        text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    text = " ".join(text.split())
    return text.lower() if how == "lower" else text
