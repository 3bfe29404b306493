"""The export directory: the hand-off from training to any program that loads it with torch.

    export/
      config.json           format, format_version, recsys version, scorer config, tokenizer
      model.safetensors     the Scorer's state_dict: embeddings + data buffers (token bags,
                            user histories, warm-item mask)
      extras.safetensors    seen-item CSR (seen_indptr, seen_indices) excluded by `recommend`,
                            and token_idf (for tokenising items added later)
      users.json / items.json / tokens.json   vocabularies: JSON lists, index = position
                            (items.json also holds a readable title per item)
      tokenizer.json        bpe / pretrained tokenizers only: the Hugging Face tokenizer file
                            (so loading needs neither the training data nor the model package)

A pretrained token table is stored as its projection to the model width (Scorer.baked): the
same scores, a (n_tokens, dim) table instead of (n_tokens, 384) plus the projection.

No pickle anywhere: JSON and safetensors only. The directory is written under a temporary name
and renamed into place, so a crash mid-write never leaves a partial export that loads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recsys.models.registry import model_from_state
from recsys.data.tokenize import WordTokenizer, tokenizer_from_json
from recsys.data.vocab import Vocab

FORMAT = "recsys-export"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An export directory that cannot be loaded; the message says which file and why."""


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _read_json(path: str):
    if not os.path.exists(path):
        raise ExportError(f"export file missing: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"export file {path} is not valid JSON: {e}") from None


def _read_tensors(path: str, device: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise ExportError(f"export file missing: {path}")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"export file {path} is truncated or corrupted: {e}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: str, mode: int) -> None:
    """mkdtemp / mkstemp create 0700 / 0600; give what plain open / mkdir would (umask)."""
    os.chmod(path, mode & ~_umask())


def check_target(final: str) -> None:
    """Refuse to write an export over anything but nothing, an empty directory or an export.

    Writing replaces the directory at `final` as a whole, so a folder holding anything else
    (a project, notes) or a regular file there would be lost: refused, and left untouched."""
    if not os.path.lexists(final):
        return
    if not os.path.isdir(final) or os.path.islink(final):
        raise ExportError(f"cannot save an export to {final}: it exists and is not a directory "
                          f"(choose a new path; nothing was changed)")
    if not os.listdir(final):
        return
    try:
        with open(os.path.join(final, "config.json"), encoding="utf-8") as f:
            fmt = json.load(f).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != FORMAT:
        raise ExportError(f"cannot save an export to {final}: the directory is not empty and is not a "
                          f"recsys export (no config.json with format {FORMAT!r}); nothing was changed")


def atomic_dir(final: str):
    """A temporary sibling directory of `final`; `commit_dir(tmp, final)` moves it into place."""
    check_target(final)
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    _normal_mode(tmp, 0o777)
    return tmp


def commit_dir(tmp: str, final: str) -> None:
    check_target(final)      # again: something may have appeared there while we wrote
    old = None
    if os.path.exists(final):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=os.path.dirname(os.path.abspath(final)))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
        _normal_mode(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_export(path: str, scorer: torch.nn.Module, users: Vocab, items: Vocab, tokens: Vocab,
                tokenizer: WordTokenizer, seen: tuple[torch.Tensor, torch.Tensor],
                token_idf: torch.Tensor, item_titles: list[str] | None = None,
                meta: dict | None = None) -> str:
    from recsys import __version__
    tmp = atomic_dir(path)
    try:
        scorer = scorer.baked()
        tokenizer.save_files(tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in scorer.state_dict().items()}
        save_file(state, os.path.join(tmp, "model.safetensors"))
        save_file({"seen_indptr": seen[0].cpu().contiguous(), "seen_indices": seen[1].cpu().contiguous(),
                   "token_idf": torch.as_tensor(token_idf, dtype=torch.float32).cpu().contiguous()},
                  os.path.join(tmp, "extras.safetensors"))
        _write_json(os.path.join(tmp, "config.json"), {
            "format": FORMAT, "format_version": FORMAT_VERSION, "recsys_version": __version__,
            "scorer": scorer.config.to_json(), "tokenizer": tokenizer.to_json(), "meta": meta or {}})
        _write_json(os.path.join(tmp, "users.json"), users.to_json())
        _write_json(os.path.join(tmp, "items.json"), {**items.to_json(), "titles": item_titles})
        _write_json(os.path.join(tmp, "tokens.json"), tokens.to_json())
        for name in os.listdir(tmp):           # safetensors writes 0600, like mkstemp
            _normal_mode(os.path.join(tmp, name), 0o666)
        commit_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_export(path: str, device: str = "cpu") -> dict:
    """{'scorer', 'users', 'items', 'tokens', 'tokenizer', 'seen', 'token_idf', 'titles', 'config'}."""
    if not os.path.isdir(path):
        raise ExportError(f"export directory not found: {path}")
    cfg = _read_json(os.path.join(path, "config.json"))
    if cfg.get("format") != FORMAT:
        raise ExportError(f"{path}/config.json is not a recsys export (format={cfg.get('format')!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has export format version {cfg.get('format_version')}; this recsys "
                          f"reads version {FORMAT_VERSION}")
    state = _read_tensors(os.path.join(path, "model.safetensors"), device)
    extras = _read_tensors(os.path.join(path, "extras.safetensors"), device)
    try:
        scorer = model_from_state(cfg["scorer"], state)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ExportError(f"{path}/model.safetensors does not match config.json: {str(e).splitlines()[0]}") from None
    scorer.to(device).eval()
    try:
        tokenizer = tokenizer_from_json(cfg["tokenizer"], path)
    except (FileNotFoundError, ValueError, TypeError, KeyError, ImportError) as e:
        raise ExportError(f"{path}: the tokenizer cannot be loaded: {str(e).splitlines()[0]}") from None
    items = _read_json(os.path.join(path, "items.json"))
    return {
        "config": cfg,
        "scorer": scorer,
        "users": Vocab.from_json(_read_json(os.path.join(path, "users.json"))),
        "items": Vocab.from_json(items),
        "titles": items.get("titles"),
        "tokens": Vocab.from_json(_read_json(os.path.join(path, "tokens.json"))),
        "tokenizer": tokenizer,
        "seen": (extras["seen_indptr"], extras["seen_indices"]),
        "token_idf": extras["token_idf"],
    }
