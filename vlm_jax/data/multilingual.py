"""Emoji names in 14 languages from the `emoji` package (CLDR annotations), for multilingual captions."""
from __future__ import annotations

import functools

import emoji

LANGUAGES: tuple[str, ...] = tuple(emoji.LANGUAGES)  # en es ja ko pt it fr de fa id zh ru tr ar


def _clean(name: str) -> str:
    """':grinning_face:' → 'grinning face'."""
    return name.strip(":").replace("_", " ").strip()


@functools.lru_cache(maxsize=None)
def names(lang: str) -> dict[str, str]:
    """Emoji string → its name in `lang`."""
    if lang not in LANGUAGES:
        raise ValueError(f"Unknown language {lang!r}; valid: {', '.join(LANGUAGES)}")
    emoji.config.load_language(lang)
    return {e: _clean(d[lang]) for e, d in emoji.EMOJI_DATA.items() if lang in d}


def name_of(char: str, lang: str) -> str | None:
    """Name of an emoji in `lang`, trying it with and without the emoji variation selector."""
    table = names(lang)
    for key in (char, char.replace("\ufe0f", ""), char + "\ufe0f"):
        if key in table:
            return table[key]
    return None
