"""BERT's uncased WordPiece tokenizer (Devlin et al. 2019), for pretrained BERT-family text towers (MiniLM).

Basic tokenization (lower case, accents stripped, control characters dropped, CJK characters and punctuation split
off, whitespace split), then greedy longest-match-first WordPiece with "##" continuations; a word longer than 100
characters or with no match becomes [UNK]. Sequences are [CLS] … [SEP], right-padded with [PAD].
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np

MAX_WORD_CHARS = 100


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:  # ASCII non-alphanumerics
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                             (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                             (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def basic_tokenize(text: str) -> list[str]:
    """Lower-cased, accent-stripped words and single punctuation marks."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        cleaned.append(" " if _is_whitespace(ch) else f" {ch} " if _is_cjk(cp) else ch)
    words = []
    for word in "".join(cleaned).split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                words += [current] if current else []
                words.append(ch)
                current = ""
            else:
                current += ch
        words += [current] if current else []
    return words


class WordPieceTokenizer:
    """Texts → [CLS] pieces [SEP] id rows; the attributes the datasets and objectives read of a tokenizer."""

    def __init__(self, vocab_path: str | Path):
        self.vocab_path = str(vocab_path)
        pieces = Path(vocab_path).read_text(encoding="utf-8").split("\n")
        if pieces and pieces[-1] == "":
            pieces = pieces[:-1]
        self.pieces = pieces
        self.ids = {p: i for i, p in enumerate(pieces)}
        self.pad_id, self.unk_id = self.ids["[PAD]"], self.ids["[UNK]"]
        self.cls_id, self.sep_id, self.mask_id = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[MASK]"]

    @property
    def vocab_size(self) -> int:
        """Rows of the pretrained word embedding."""
        return len(self.pieces)

    @property
    def eos_id(self) -> int:
        """[SEP]: the end of every sequence."""
        return self.sep_id

    @property
    def bos_id(self) -> int:
        """[CLS]: the start of every sequence."""
        return self.cls_id

    @property
    def decoder_vocab_size(self) -> int:
        """The vocabulary already holds [CLS] and [MASK]: no rows are added."""
        return len(self.pieces)

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match pieces of one basic token ([UNK] when some part has no piece)."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    out.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return out

    def tokenize(self, text: str) -> list[int]:
        """Piece ids of one text, without [CLS] / [SEP]."""
        return [i for word in basic_tokenize(text) for i in self.wordpiece(word)]

    def encode(self, texts: list[str], max_len: int) -> np.ndarray:
        """int32 [N, max_len]: [CLS], pieces truncated to max_len − 2, [SEP], then [PAD]."""
        out = np.full((len(texts), max_len), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            ids = [self.cls_id, *self.tokenize(text)[:max_len - 2], self.sep_id]
            out[row, :len(ids)] = ids
        return out

    def __call__(self, texts: list[str], max_len: int) -> np.ndarray:
        return self.encode(texts, max_len)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Rows of ids → text (special tokens dropped, "##" pieces joined)."""
        specials = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}
        out = []
        for row in np.asarray(ids).reshape(-1, np.shape(ids)[-1]).tolist():
            words: list[str] = []
            for i in row:
                if i == self.sep_id:
                    break
                if i in specials or not 0 <= i < len(self.pieces):
                    continue
                piece = self.pieces[i]
                if piece.startswith("##") and words:
                    words[-1] += piece[2:]
                else:
                    words.append(piece)
            out.append(" ".join(words))
        return out
