"""The `word` tokenizer: lower-cased alphanumeric words of every text field.

Each item's text is a list of fields (title, genres, tags, any text column). A field named in
`prefix_fields` has its tokens prefixed with the field name (`genres:comedy`), so a genre and
the same word in a title are different tokens; other fields give plain words.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class WordTokenizer:
    lowercase: bool = True
    min_len: int = 1
    prefix_fields: list[str] = field(default_factory=list)

    def tokenize(self, text: str, field_name: str | None = None) -> list[str]:
        if not isinstance(text, str) or not text:
            return []
        if self.lowercase:
            text = text.lower()
        words = [w for w in _WORD.findall(text) if len(w) >= self.min_len]
        if field_name is not None and field_name in self.prefix_fields:
            words = [f"{field_name}:{w}" for w in words]
        return words

    def tokenize_fields(self, fields: dict[str, str]) -> list[str]:
        out: list[str] = []
        for name, text in fields.items():
            out.extend(self.tokenize(text, name))
        return out

    def to_json(self) -> dict:
        return {"kind": "word", **asdict(self)}
