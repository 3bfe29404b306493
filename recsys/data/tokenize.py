"""Tokenizers: text fields of an item -> a list of token strings. Chosen by `data.tokens.kind`
(the `tokenizer` config group):

    word        lower-cased alphanumeric words (this file, no dependency)
    bpe         subwords trained on the catalog with Hugging Face `tokenizers` (subword.py)
    pretrained  a language model's WordPiece tokenizer + token embeddings (subword.py)

All share: `fit(field_dicts)` (bpe trains, the others have nothing to learn), `tokenize_fields`,
`to_json()` (stored in the export's config.json) and `save_files(dir)`/`load_files(dir)` for
what does not fit in JSON (the Hugging Face tokenizer.json).

The `word` tokenizer: lower-cased alphanumeric words of every text field.

Each item's text is a list of fields (title, genres, tags, any text column). A field named in
`prefix_fields` has its tokens prefixed with the field name (`genres:comedy`), so a genre and
the same word in a title are different tokens; other fields give plain words.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from recsys.data.subword import BpeTokenizer, PretrainedTokenizer


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class WordTokenizer:
    lowercase: bool = True
    min_len: int = 1
    prefix_fields: list[str] = field(default_factory=list)
    kind = "word"

    def fit(self, field_dicts=None) -> "WordTokenizer":
        return self

    def save_files(self, directory: str) -> None:
        pass

    def load_files(self, directory: str) -> None:
        pass

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


TOKENIZERS = ("word", "bpe", "pretrained")


def make_tokenizer(kind: str = "word", **options):
    """A tokenizer from config values (data.tokens without min_count / max_size)."""
    if kind == "word":
        return WordTokenizer(**options)
    if kind == "bpe":
        return BpeTokenizer(**options)
    if kind == "pretrained":
        if options.pop("prefix_fields", None):
            raise ValueError("data.tokens.prefix_fields must be empty for tokenizer=pretrained "
                             "(its tokens must stay the model's own)")
        return PretrainedTokenizer(**options)
    raise ValueError(f"data.tokens.kind={kind!r} is not one of {TOKENIZERS}")


def tokenizer_from_json(obj: dict, directory: str | None = None):
    """The tokenizer of an export: config.json's entry plus the files in the export directory."""
    obj = dict(obj)
    tok = make_tokenizer(obj.pop("kind", "word"), **obj)
    if directory is not None:
        tok.load_files(directory)
    return tok
