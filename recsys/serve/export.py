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

Loading trusts none of these files: load_export checks every size, type and index against
config.json and the safetensors headers before it builds anything (see "loading" below).

A pretrained token table is stored as its projection to the model width (Scorer.baked): the
same scores, a (n_tokens, dim) table instead of (n_tokens, 384) plus the projection.

No pickle anywhere: JSON and safetensors only. The directory is written under a temporary name
and renamed into place, so a crash mid-write never leaves a partial export that loads.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from recsys.data.files import normal_mode
from recsys.data.tokenize import WordTokenizer, tokenizer_from_json
from recsys.data.vocab import ID_TYPES, Vocab
from recsys.models.blend import BLEND_NORMS, Blend
from recsys.models.learned import ScorerConfig
from recsys.models.memory import MemoryConfig, MemoryModel
from recsys.models.registry import KINDS, model_from_state
from recsys.models.sequence import Sequence, SequenceConfig
from recsys.serve.checksums import ChecksumError, NAME as CHECKSUMS, verify_checksums, write_checksums
from recsys.version import __version__

FORMAT = "recsys-export"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An export directory that cannot be loaded; the message says which file and why."""


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


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
    normal_mode(tmp, 0o777)
    return tmp


# every name an export may write: on re-save these are replaced (or dropped when the new export
# has no such file); anything else in the folder is the user's and is carried over untouched
OWN_FILES = frozenset({"config.json", "model.safetensors", "extras.safetensors", "users.json", "items.json",
                       "tokens.json", "tokenizer.json", CHECKSUMS})


def _carry(src: str, dst: str) -> None:
    """dst: the same file or tree as src through hard links (symlinks as links): nothing is
    copied, and src stays whole until its directory is dropped."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        os.mkdir(dst)
        shutil.copystat(src, dst)
        for name in os.listdir(src):
            _carry(os.path.join(src, name), os.path.join(dst, name))
    else:
        try:
            os.link(src, dst)
        except OSError:            # no hard links here (another filesystem): a copy
            shutil.copy2(src, dst)


def commit_dir(tmp: str, final: str) -> None:
    """Move the written export `tmp` into place at `final` in one rename. Files in an existing
    export at `final` that an export does not own (OWN_FILES: a README, notes, a user's
    anything) are carried into the new one first, so nothing the user put there is deleted."""
    check_target(final)      # again: something may have appeared there while we wrote
    old = None
    if os.path.exists(final):
        for name in os.listdir(final):
            if name not in OWN_FILES and not os.path.lexists(os.path.join(tmp, name)):
                _carry(os.path.join(final, name), os.path.join(tmp, name))
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=os.path.dirname(os.path.abspath(final)))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def save_export(path: str, scorer: torch.nn.Module, users: Vocab, items: Vocab, tokens: Vocab,
                tokenizer: WordTokenizer, seen: tuple[torch.Tensor, torch.Tensor],
                token_idf: torch.Tensor, item_titles: list[str] | None = None,
                meta: dict | None = None, item_attributes: dict[str, list[str]] | None = None) -> str:
    """item_attributes: {name: one string per item}, kept for Recommender's where= filters."""
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
        _write_json(os.path.join(tmp, "items.json"), {**items.to_json(), "titles": item_titles,
                                                      "attributes": item_attributes or {}})
        _write_json(os.path.join(tmp, "tokens.json"), tokens.to_json())
        write_checksums(tmp, os.listdir(tmp))
        for name in os.listdir(tmp):           # safetensors writes 0600, like mkstemp
            normal_mode(os.path.join(tmp, name), 0o666)
        commit_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --- loading: nothing in an export is trusted ---------------------------------------------------
# load_export checks, in this order, before it builds anything: the device argument; config.json
# (its structure, and the type of every size and option); each safetensors header (tensor names,
# dtypes and shapes, read without loading a tensor) against config.json's sizes, so that an
# edited size can neither allocate nor index out of bounds, then that file's tensor values (CSR
# structure, indices in range, finite floats, 0/1 bools); the vocabularies against the same sizes.
# Every failure is an ExportError whose one-line message names the file at fault.

MAX_BLEND_DEPTH = 8             # a blend's part may be a blend, up to this deep
_INT64 = 2 ** 63


def _is_size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _INT64


def _is_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return -_INT64 < v < _INT64 if isinstance(v, int) else math.isfinite(v)


# what each JSON value of a config must be: (test, description for the message)
_TYPES = {
    "size": (_is_size, "an integer >= 0"),
    "number": (_is_number, "a finite number"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "text?": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "number?": (lambda v: v is None or _is_number(v), "a number or null"),
    "texts": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "object": (lambda v: isinstance(v, dict), "a JSON object"),
}
# config.json's scorer entry per kind (the fields of ScorerConfig, MemoryConfig, BlendConfig) and
# its tokenizer entry per kind. A key not listed here is left to the config class, which refuses
# keys it does not know.
_LEARNED = dict(n_users="size", n_items="size", n_tokens="size", variant="text", dim="size", alpha="number",
                learn_alpha="flag", item_bias="flag", init_std="number", cold_k="size", cold_scale="number",
                token_pre_dim="size", token_pre_train="flag", fold_in_lambda="number")
_MEMORY = dict(kind="text", n_users="size", n_items="size", similarity="text", k="size", shrink="number",
               values="text", normalize="flag", block_size="size", max_products="number", dense_ratio="number",
               direction="text", lam="number", max_items="number", n_tokens="size", cold_k="size",
               cold_scale="number", side="number")
_SEQUENCE = dict(kind="text", n_users="size", n_items="size", n_tokens="size", dim="size", blocks="size",
                 heads="size", max_len="size", dropout="number", attn_dropout="number?", content="flag",
                 init_std="number",
                 cold_k="size", cold_scale="number")
_BLEND = dict(kind="text", n_users="size", n_items="size", alpha="number", first="object", second="object",
              norm="text")
_TOKENIZER = {"word": dict(kind="text", lowercase="flag", min_len="size", prefix_fields="texts"),
              "bpe": dict(kind="text", vocab_size="size", min_frequency="size", lowercase="flag", model="text",
                          prefix_fields="texts"),
              "pretrained": dict(kind="text", name="text", path="text?", freeze="flag")}


def _line(e: BaseException) -> str:
    """An exception's message as one short line."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


def _show(v) -> str:
    """repr of a JSON value, cut short (a bad value can be a whole nested document)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_device(device) -> torch.device:
    """The `device` argument as a torch.device that this machine has (ValueError otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device={device!r} is not a torch device ({_line(e)}); use 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda}); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r}: MPS is not available on this machine; use device='cpu'")
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r}: an export loads onto 'cpu', 'cuda' or 'mps'")
    return torch.device("cpu") if dev.type == "cpu" else dev


MAX_CONFIG_BYTES = 1 << 20         # config.json; the vocabularies: this plus PER_ENTRY_BYTES an entry
PER_ENTRY_BYTES = 1 << 16          # (an id with its title and attributes in items.json)
MAX_TOKENIZER_BYTES = 1 << 28


def _read_json(path: str, max_bytes: int = MAX_CONFIG_BYTES):
    """The JSON of a regular file of at most max_bytes (what config.json's sizes allow): a
    device, a FIFO or a file past the bound is refused before anything is read."""
    if not os.path.exists(path):
        raise ExportError(f"export file missing: {path}")
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ExportError(f"export file {path} is not a regular file (a device, FIFO or socket is never read)")
        if st.st_size > max_bytes:
            raise ExportError(f"export file {path} has {st.st_size:,} bytes, more than the {max_bytes:,} its "
                              f"config.json's sizes allow")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:            # grew while we read
            raise ExportError(f"export file {path} has more than the {max_bytes:,} bytes its config.json's sizes allow")
        return json.loads(data.decode("utf-8"))
    except ExportError:
        raise
    except RecursionError:
        raise ExportError(f"export file {path} is not valid JSON: nested too deeply") from None
    except ValueError as e:         # JSONDecodeError, UnicodeDecodeError, an integer too long to read
        raise ExportError(f"export file {path} is not valid JSON: {_line(e)}") from None
    except OSError as e:
        raise ExportError(f"export file {path} cannot be read: {_line(e)}") from None


def _check_fields(obj, fields: dict, required: tuple, file: str, where: str) -> None:
    """obj is a JSON object whose keys in `fields` have values of their type, and has `required`."""
    if not isinstance(obj, dict):
        raise ExportError(f"{file}: {where} must be a JSON object, got {type(obj).__name__} {_show(obj)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ExportError(f"{file}: {where} has no {missing[0]!r}")
    for key, kind in fields.items():
        if key in obj:
            test, what = _TYPES[kind]
            if not test(obj[key]):
                raise ExportError(f"{file}: {where}.{key} must be {what}, got {_show(obj[key])}")


def _check_config(cfg, file: str) -> None:
    """config.json's top level and its tokenizer entry (the scorer entry: _model_spec)."""
    if not isinstance(cfg, dict):
        raise ExportError(f"{file} is not a recsys export (a JSON {type(cfg).__name__}, not an object)")
    if cfg.get("format") != FORMAT:
        raise ExportError(f"{file} is not a recsys export (format={_show(cfg.get('format'))})")
    version = cfg.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ExportError(f"{file}: format_version is {_show(version)} ({type(version).__name__}), not an "
                          f"integer; this recsys reads version {FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise ExportError(f"{os.path.dirname(file)} has export format version {version}; this recsys reads "
                          f"version {FORMAT_VERSION}")
    for key in ("scorer", "tokenizer"):
        if not isinstance(cfg.get(key), dict):
            raise ExportError(f"{file}: {key} must be a JSON object, got {_show(cfg.get(key))}")
    meta = cfg.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ExportError(f"{file}: meta must be a JSON object, got {_show(meta)}")
    if meta and "text_fields" in meta and not _TYPES["texts"][0](meta["text_fields"]):
        raise ExportError(f"{file}: meta.text_fields must be a list of strings, got {_show(meta['text_fields'])}")
    tok = cfg["tokenizer"]
    kind = tok.get("kind", "word")
    if not isinstance(kind, str) or kind not in _TOKENIZER:
        raise ExportError(f"{file}: tokenizer.kind={_show(kind)} is not one of {tuple(_TOKENIZER)}")
    _check_fields(tok, _TOKENIZER[kind], (), file, "tokenizer")


class _Spec:
    """The tensors a model stores, derived from config.json alone: name -> (dtype, shape) (None in
    a shape: any length), its CSR matrices (indptr, indices, n_cols), and groups of tensors that
    may be absent together (a memory model's token bags and cold fill)."""

    def __init__(self):
        self.tensors: dict[str, tuple[str, tuple]] = {}
        self.csr: list[tuple[str, str, str | None, int]] = []
        self.optional: list[tuple[str, ...]] = []
        self.n_tokens: set[int] = set()     # token vocabulary sizes the parts need

    def add(self, name: str, dtype: str, *shape) -> None:
        self.tensors[name] = (dtype, shape)

    def add_csr(self, prefix: str, rows: int, cols: int, values: str | None, optional: bool = False) -> None:
        """(rows, cols) CSR: prefix_indptr (rows + 1,), prefix_indices (nnz,), values (nnz,) float."""
        names = (f"{prefix}_indptr", f"{prefix}_indices") + ((values,) if values else ())
        self.add(names[0], "I64", rows + 1)
        self.add(names[1], "I64", None)
        if values:
            self.add(values, "F32", None)
        self.csr.append((names[0], names[1], values, cols))
        if optional:
            self.optional.append(names)

    def select(self, present) -> dict[str, tuple[str, tuple]]:
        """The tensors expected, given the names `present` (an optional group: all or none)."""
        absent = set()
        for group in self.optional:
            have = [n for n in group if n in present]
            if have and len(have) < len(group):
                missing = [n for n in group if n not in present]
                raise ValueError(f"has {have} but not {missing}")
            if not have:
                absent.update(group)
        return {k: v for k, v in self.tensors.items() if k not in absent}


def _model_spec(c, file: str, where: str = "scorer", prefix: str = "", spec: _Spec | None = None,
                depth: int = 0) -> _Spec:
    """The tensors config.json's scorer entry `c` says model.safetensors holds (key prefix for a
    blend's parts), with every size and option type-checked first."""
    spec = spec if spec is not None else _Spec()
    if not isinstance(c, dict):
        raise ExportError(f"{file}: {where} must be a JSON object, got {_show(c)}")
    kind = c.get("kind", "learned")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ExportError(f"{file}: {where}.kind={_show(kind)} is not a model kind "
                          f"({', '.join(sorted(KINDS))}; none means learned)")
    if cls is Blend:
        _check_fields(c, _BLEND, ("n_users", "n_items", "alpha", "first", "second"), file, where)
        unknown = sorted(set(c) - set(_BLEND))
        if unknown:
            raise ExportError(f"{file}: {where} has unknown key {unknown[0]!r}")
        if not 0 <= c["alpha"] <= 1 or c.get("norm", "zscore") not in BLEND_NORMS:
            raise ExportError(f"{file}: {where} needs alpha in [0, 1] and norm in {BLEND_NORMS}, got "
                              f"alpha={_show(c['alpha'])}, norm={_show(c.get('norm'))}")
        if depth >= MAX_BLEND_DEPTH:
            raise ExportError(f"{file}: {where} nests blends more than {MAX_BLEND_DEPTH} deep")
        for part in ("first", "second"):
            sub = c[part]
            for size in ("n_users", "n_items"):
                if isinstance(sub, dict) and sub.get(size) != c[size]:
                    raise ExportError(f"{file}: {where}.{part}.{size}={_show(sub.get(size))} differs from "
                                      f"{where}.{size}={c[size]}")
            _model_spec(sub, file, f"{where}.{part}", f"{prefix}{part}.", spec, depth + 1)
        return spec
    if cls is Sequence:
        _check_fields(c, _SEQUENCE, ("kind", "n_users", "n_items", "n_tokens"), file, where)
        try:
            m = SequenceConfig(**c)
        except (TypeError, ValueError) as e:
            raise ExportError(f"{file}: {where}: {_line(e)}") from None
        cls.declare_tensors(m, spec, prefix)
        spec.n_tokens.add(m.n_tokens)
        return spec
    memory = issubclass(cls, MemoryModel)
    if memory:
        _check_fields(c, _MEMORY, ("kind", "n_users", "n_items"), file, where)
    else:
        _check_fields(c, _LEARNED, ("n_users", "n_items", "n_tokens"), file, where)
    try:
        m = MemoryConfig(**c) if memory else ScorerConfig(**c)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{file}: {where}: {_line(e)}") from None
    if not memory and m.token_pre_dim:
        raise ExportError(f"{file}: {where}.token_pre_dim={m.token_pre_dim}: an export stores the token "
                          f"table projected (token_pre_dim 0)")
    cls.declare_tensors(m, spec, prefix)            # each kind says what its export holds
    if not memory or m.n_tokens > 0:
        spec.n_tokens.add(m.n_tokens)
    return spec


def _shape(shape) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_sizes(spec: _Spec, header: dict, file: str) -> dict[str, tuple[str, tuple]]:
    """Every tensor the config calls for is in the header with its dtype and shape, nothing else
    is, and each CSR matrix's indices and values have one length. Returns the tensors expected."""
    def fail(why):
        return ExportError(f"{file} does not match config.json: {why}")
    try:
        expected = spec.select(header)
    except ValueError as e:
        raise fail(str(e)) from None
    missing = sorted(set(expected) - set(header))
    if missing:
        raise fail(f"missing tensors {missing[:4]}")
    unexpected = sorted(set(header) - set(expected))
    if unexpected:
        raise fail(f"unexpected tensors {unexpected[:4]}")
    for name, (dtype, shape) in sorted(expected.items()):
        got_dtype, got = header[name]
        if got_dtype != dtype:
            raise fail(f"tensor {name} is {got_dtype}, not {dtype}")
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            raise fail(f"tensor {name} has shape {_shape(got)}; config.json's sizes give {_shape(shape)}")
    for _, indices, values, _ in spec.csr:
        if values in expected and header[values][1] != header[indices][1]:
            raise fail(f"{values} has {header[values][1][0]} entries, {indices} {header[indices][1][0]}")
    return expected


def _read_tensors(path: str, spec: _Spec, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, its header checked against `spec` before any is read,
    their values after (one open file: what is checked is what is read)."""
    if not os.path.exists(path):
        raise ExportError(f"export file missing: {path}")
    try:
        with safe_open(path, "pt", device=str(device)) as f:
            _check_sizes(spec, {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()},
                         path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"export file {path} is truncated or corrupted: {_line(e)}") from None
    _check_values(tensors, spec, path)
    return tensors


def _check_values(tensors: dict[str, torch.Tensor], spec: _Spec, file: str) -> None:
    """CSR row pointers that start at 0, never decrease and end at the number of entries; column
    indices in range; floats finite; bools stored as 0 / 1 (anything else reads as true and false)."""
    for indptr, indices, _, n_cols in spec.csr:
        if indptr not in tensors:
            continue                                   # an absent optional group
        p, i = tensors[indptr], tensors[indices]
        if int(p[0]) != 0 or int(p[-1]) != len(i) or bool((p[1:] < p[:-1]).any()):
            raise ExportError(f"{file}: {indptr} is not a CSR row pointer over {len(i)} entries (it must "
                              f"start at 0, never decrease and end at {len(i)})")
        if len(i) and (int(i.min()) < 0 or int(i.max()) >= n_cols):
            bad = int(i.min()) if int(i.min()) < 0 else int(i.max())
            raise ExportError(f"{file}: {indices} holds index {bad}, outside [0, {n_cols})")
    for name, t in sorted(tensors.items()):
        if t.dtype == torch.bool and bool((t.view(torch.uint8) > 1).any()):
            raise ExportError(f"{file}: tensor {name} holds bytes other than 0 and 1 (a bool tensor)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportError(f"{file}: tensor {name} holds NaN or infinite values")


def _read_vocab(path: str, n: int, size_name: str, what: str, keys=("ids", "unk", "id_type")) -> tuple[Vocab, dict]:
    """A vocabulary file: {"ids": [...], "unk": id or null} with n unique ids, all strings or all
    64-bit integers (what='tokens': strings only). Returns the Vocab and the JSON object."""
    obj = _read_json(path, MAX_CONFIG_BYTES + n * PER_ENTRY_BYTES)
    if not isinstance(obj, dict) or not isinstance(obj.get("ids"), list):
        raise ExportError(f"{path} must be a JSON object with a list 'ids', got {_show(obj)}")
    unknown = sorted(set(obj) - set(keys))
    if unknown:
        raise ExportError(f"{path} has unknown key {unknown[0]!r} (keys are {list(keys)})")
    ids = obj["ids"]
    if len(ids) != n:
        raise ExportError(f"{path} has {len(ids)} ids; config.json's {size_name} is {n}")
    strings = all(isinstance(i, str) for i in ids)
    ints = all(_is_number(i) and isinstance(i, int) for i in ids)
    if not strings and (what == "tokens" or not ints):
        kinds = sorted({type(i).__name__ for i in ids})
        rule = "strings" if what == "tokens" else "all strings or all 64-bit integers"
        raise ExportError(f"{path}: {what} ids must be {rule}, found {kinds}")
    unique = set(ids)
    if len(unique) != len(ids):
        seen: set = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ExportError(f"{path}: id {_show(dup)} appears more than once")
    unk = obj.get("unk")
    if unk is not None and not (isinstance(unk, (str, int)) and not isinstance(unk, bool) and unk in unique):
        raise ExportError(f"{path}: unk={_show(unk)} is not one of its ids")
    id_type = obj.get("id_type")        # absent in exports made before it was recorded: from the ids
    if id_type is not None and (id_type not in ID_TYPES or (ids and id_type != ("str" if strings else "int"))):
        raise ExportError(f"{path}: id_type={_show(id_type)} must be one of {list(ID_TYPES)} "
                          f"and match the ids ({'strings' if strings else 'integers'})")
    return Vocab(ids, unk=unk, id_type=id_type), obj


def load_export(path: str, device: str = "cpu", verify: bool = True) -> dict:
    """{'scorer', 'users', 'items', 'tokens', 'tokenizer', 'seen', 'token_idf', 'titles', 'attributes',
    'config'}.

    Raises ValueError for a `device` this machine does not have, and ExportError (one line, naming
    the file) for anything wrong in the export: nothing is built before every size is checked.
    verify: check the files against the export's checksums.json (when it has one)."""
    dev = _check_device(device)
    if not os.path.isdir(path):
        raise ExportError(f"export directory not found: {path}")
    if verify:
        try:
            verify_checksums(path, OWN_FILES)
        except ChecksumError as e:
            raise ExportError(str(e)) from None
    f = {name: os.path.join(path, name) for name in ("config.json", "model.safetensors", "extras.safetensors",
                                                     "users.json", "items.json", "tokens.json", "tokenizer.json")}
    cfg = _read_json(f["config.json"])
    _check_config(cfg, f["config.json"])
    spec = _model_spec(cfg["scorer"], f["config.json"])
    n_users, n_items = cfg["scorer"]["n_users"], cfg["scorer"]["n_items"]
    if len(spec.n_tokens) > 1:
        raise ExportError(f"{f['config.json']}: the blend's parts give different n_tokens {sorted(spec.n_tokens)}")
    # the tensors: names, dtypes and shapes from the headers against config.json's sizes, then values
    state = _read_tensors(f["model.safetensors"], spec, dev)
    extras_spec = _Spec()
    extras_spec.add_csr("seen", n_users, n_items, None)
    extras_spec.add("token_idf", "F32", None)
    extras = _read_tensors(f["extras.safetensors"], extras_spec, dev)
    # the vocabularies against the same sizes
    users, _ = _read_vocab(f["users.json"], n_users, "n_users", "user")
    items, items_obj = _read_vocab(f["items.json"], n_items, "n_items", "item", ("ids", "unk", "id_type", "titles", "attributes"))
    titles = items_obj.get("titles")
    if titles is not None and not (_TYPES["texts"][0](titles) and len(titles) == n_items):
        raise ExportError(f"{f['items.json']}: titles must be null or a list of {n_items} strings, got {_show(titles)}")
    attributes = items_obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ExportError(f"{f['items.json']}: attributes must be an object {{name: list of strings}}, got {_show(attributes)}")
    for name, v in attributes.items():
        if not (_TYPES["texts"][0](v) and len(v) == n_items):
            raise ExportError(f"{f['items.json']}: attributes[{name!r}] must be a list of {n_items} strings, got {_show(v)}")
    n_idf = len(extras["token_idf"])
    if spec.n_tokens:
        n_tokens, size_name = next(iter(spec.n_tokens)), "n_tokens"
    else:
        n_tokens, size_name = n_idf, "token_idf length (extras.safetensors)"
    tokens, _ = _read_vocab(f["tokens.json"], n_tokens, size_name, "tokens")
    if n_idf != n_tokens:
        raise ExportError(f"{f['extras.safetensors']}: token_idf has {n_idf} entries; tokens.json has {n_tokens} tokens")
    # only now the model, from checked parts
    try:
        scorer = model_from_state(cfg["scorer"], state)
    except (KeyError, TypeError, RuntimeError, ValueError, IndexError) as e:
        raise ExportError(f"{f['model.safetensors']} does not match config.json: {_line(e)}") from None
    scorer.to(dev).eval()
    return {
        "config": cfg,
        "scorer": scorer,
        "users": users,
        "items": items,
        "titles": titles,
        "attributes": attributes,
        "tokens": tokens,
        "tokenizer": _load_tokenizer(cfg["tokenizer"], path, f["config.json"], f["tokenizer.json"]),
        "seen": (extras["seen_indptr"], extras["seen_indices"]),
        "token_idf": extras["token_idf"],
    }


def _load_tokenizer(entry: dict, path: str, config_file: str, file: str):
    """The tokenizer from config.json's entry, plus tokenizer.json for bpe / pretrained."""
    try:
        tokenizer = tokenizer_from_json(entry)
    except (ValueError, TypeError, KeyError, ImportError) as e:
        raise ExportError(f"{config_file}: the tokenizer entry cannot be used: {_line(e)}") from None
    if tokenizer.kind == "word":
        return tokenizer
    if not isinstance(_read_json(file, MAX_TOKENIZER_BYTES), dict):
        raise ExportError(f"{file} is not a Hugging Face tokenizer file (not a JSON object)")
    try:
        tokenizer.load_files(path)
    except Exception as e:      # the tokenizers library raises a bare Exception for a bad file
        raise ExportError(f"{file} cannot be loaded by the tokenizers library: {_line(e)}") from None
    return tokenizer
