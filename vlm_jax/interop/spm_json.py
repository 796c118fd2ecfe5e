"""vlm_jax's SentencePiece tokenizers written as an HF `tokenizer.json` (a `tokenizers` Unigram model with the
model's own normalisation table), so that transformers' AutoTokenizer, and through it open_clip's HFTokenizer and
clip_benchmark, tokenize exactly as vlm_jax does: pieces, then EOS, truncated to the context with EOS kept, padded
with 0."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL = {"pad": "<pad>", "unk": "<unk>", "eos": "</s>"}


def build(model_path: str | Path) -> Any:
    """A `tokenizers.Tokenizer` equal to `vlm_jax.data.tokenizer.Tokenizer(model_path).encode` (before framing)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    if proto.trainer_spec.model_type != proto.trainer_spec.UNIGRAM:
        raise ValueError(f"{model_path}: only unigram SentencePiece models convert (this one is "
                         f"{proto.trainer_spec.model_type})")
    norm = proto.normalizer_spec
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=proto.trainer_spec.byte_fallback))
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    pre = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always" if norm.add_dummy_prefix else "never",
                                    split=proto.trainer_spec.split_by_whitespace)]
    if proto.trainer_spec.split_digits:
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    eos = sp.eos_id()
    tok.post_processor = processors.TemplateProcessing(single=f"$A {SPECIAL['eos']}",
                                                       special_tokens=[(SPECIAL["eos"], eos)])
    for name in SPECIAL.values():
        if sp.piece_to_id(name) == sp.unk_id() and name != SPECIAL["unk"]:
            raise ValueError(f"{model_path}: no {name} piece")
    return tok


def write(model_path: str | Path, folder: str | Path, max_len: int) -> list[Path]:
    """Writes tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast) into `folder`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build(model_path)
    tok.add_special_tokens(list(SPECIAL.values()))
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(max_len),
              "pad_token": SPECIAL["pad"], "unk_token": SPECIAL["unk"], "eos_token": SPECIAL["eos"],
              "padding_side": "right", "truncation_side": "right", "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return [folder / "tokenizer.json", folder / "tokenizer_config.json"]
