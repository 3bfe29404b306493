"""Fuzzing the export loader: whatever happens to the files of an export (truncated, bytes
flipped, replaced by other JSON, keys deleted, numbers changed, safetensors headers or tensor
values edited, files swapped, emptied or deleted), `Recommender.from_pretrained` either loads a
model whose `recommend` works for a user it knows, or raises ExportError with a one-line message
naming the export. Never another exception, never a hang.

Three small real exports are corrupted: a learned hybrid with a bpe tokenizer (so tokenizer.json
is fuzzed too), an ItemKNN with cold fill rows and token bags, and a blend of EASE and content
KNN (tensor names prefixed `first.` / `second.`). The default suite runs 200 derandomized cases;
`pytest -m slow tests/test_fuzz_export.py` runs 3,000 more.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from recsys import Recommender
from recsys.data.prepare import prepare_files
from recsys.serve.export import ExportError, save_export
from recsys.train.build import build_memory, build_scorer, csr

from helpers import write_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FILES = ["config.json", "model.safetensors", "extras.safetensors", "users.json", "items.json", "tokens.json",
         "tokenizer.json"]
CASE_SECONDS = 30           # one load + recommend takes milliseconds; longer is a hang


def _prepared(tmp, tokens=None):
    """8 users x 12 items, string ids, item 11 never interacted with (cold)."""
    rng = np.random.default_rng(0)
    train = [(f"u{u}", f"m{int(i)}") for u in range(8) for i in rng.choice(11, size=4, replace=False)]
    test = [(f"u{u}", f"m{(u + 5) % 11}") for u in range(8)]
    items = [(f"m{i}", f"title {i} {'red' if i % 2 else 'blue'} {'big' if i % 3 else 'small'} star")
             for i in range(12)]
    return prepare_files(train=write_csv(os.path.join(tmp, "train.csv"), ["user", "item"], train),
                         test=write_csv(os.path.join(tmp, "test.csv"), ["user", "item"], test),
                         items=write_csv(os.path.join(tmp, "items.csv"), ["item", "title"], items),
                         valid_ratio=0.0, tokens=tokens)


def _save(path, prep, model):
    return save_export(path, model, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       csr(prep.train, prep.n_users), torch.from_numpy(prep.bags.idf), prep.item_titles)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """{name: export directory} of the three exports, each checked to load and recommend."""
    tmp = str(tmp_path_factory.mktemp("fuzz"))
    word = _prepared(tmp)
    bpe = _prepared(tmp, tokens={"kind": "bpe", "vocab_size": 40, "min_frequency": 1})
    torch.manual_seed(0)
    hybrid = build_scorer(bpe, variant="hybrid", dim=4, learn_alpha=True)
    with torch.no_grad():
        for p in hybrid.parameters():
            p.copy_(torch.randn_like(p))
    out = {
        "hybrid_bpe": _save(os.path.join(tmp, "hybrid_bpe"), bpe, hybrid.eval()),
        "itemknn_cold": _save(os.path.join(tmp, "itemknn_cold"), word,
                              build_memory(word, {"kind": "itemknn", "k": 5, "cold_k": 2})),
        "blend": _save(os.path.join(tmp, "blend"), word,
                       build_memory(word, {"kind": "blend", "alpha": 0.6, "first": {"kind": "ease", "lam": 1.0},
                                           "second": {"kind": "content_knn", "k": 5}})),
    }
    for path in out.values():
        assert _load_or_refuse(path) is not None
    return out


def _load_or_refuse(path):
    """The property: the loaded model recommends for a user it knows, or ExportError in one line.
    Without the checksums (they would refuse every edit: the structural checks are what is fuzzed)."""
    try:
        rec = Recommender.from_pretrained(path, verify=False)
    except ExportError as e:
        msg = str(e)
        assert msg and "\n" not in msg and path in msg, msg
        return None
    if len(rec.users) and len(rec.items):
        k = min(3, len(rec.items))
        for user in (rec.users.ids[0], rec.users.ids[-1]):
            ids, scores = rec.recommend(user, k=k)
            assert ids.shape == (k,) and scores.shape == (k,)
    return rec


@contextlib.contextmanager
def _time_limit(seconds):
    def hang(signum, frame):
        raise AssertionError(f"a load took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- corruptions ---------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=12)
# numbers an edit puts in place of a number: sizes off by one, huge, negative, fractional, of
# another type (3e8 is the float that once made loading allocate 2.3 GB)
NUMBERS = st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 8, 9, 11, 12, 13, 17, 18, 19, 300000000, 3e8, 2 ** 31, 2 ** 63,
                           2 ** 64, 0.5, 8.0, -0.0, 1e308, float("nan"), float("inf"), True, False, "8", None]) \
    | st.integers(-2 ** 65, 2 ** 65) | st.floats()


def _put(file, raw: bytes):
    with open(file, "wb") as f:
        f.write(raw)


def _read_doc(file):
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _write_doc(file, doc):
    with open(file, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def _nodes(doc, path=()):
    """(path, value) of every node of a JSON document."""
    yield path, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from _nodes(v, path + (k,))


def _set(doc, path, value=None, delete=False):
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def _edit_json(data, file):
    """Delete a key or element, or replace a value by random JSON or by a number."""
    doc = _read_doc(file)
    nodes = list(_nodes(doc))
    numbers = [p for p, v in nodes if isinstance(v, (int, float)) and not isinstance(v, bool)]
    action = data.draw(st.sampled_from(["delete", "replace", "number"]))
    if action == "number" and numbers:
        doc = _set(doc, data.draw(st.sampled_from(numbers)), data.draw(NUMBERS))
    else:
        path = data.draw(st.sampled_from([p for p, _ in nodes]))
        doc = _set(doc, path, data.draw(JSON), delete=action == "delete" and bool(path))
    _write_doc(file, doc)


def _edit_header(data, file):
    """A safetensors header that lies: a tensor's dtype, a shape entry or an offset changed, an
    entry deleted, renamed or added; the data left as it was."""
    with open(file, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    action = data.draw(st.sampled_from(["dtype", "shape", "offsets", "delete", "rename", "add"]))
    entry = header[name]
    if action == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(["F32", "I64", "BOOL", "I32", "F16", "F64", "U8", "XX"]))
    elif action == "shape":
        shape = entry["shape"] + [1]
        shape[data.draw(st.integers(0, len(shape) - 1))] = data.draw(NUMBERS.filter(lambda v: isinstance(v, int)))
        entry["shape"] = shape[:data.draw(st.integers(0, len(shape)))]
    elif action == "offsets":
        entry["data_offsets"][data.draw(st.integers(0, 1))] = data.draw(st.integers(-1, len(body) + 9))
    elif action == "delete":
        del header[name]
    elif action == "rename":
        header["user_emb.weigh" if name != "user_emb.weigh" else "x"] = header.pop(name)
    else:
        header["extra." + name] = dict(entry)
    text = json.dumps(header).encode()
    _put(file, struct.pack("<Q", len(text)) + text + body)


def _edit_tensor(data, file):
    """A valid safetensors file with one tensor's values or length changed."""
    tensors = load_file(file)
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name].clone()
    action = data.draw(st.sampled_from(["value", "value", "shorter", "longer"]))
    if action == "value" and t.numel():
        flat = t.reshape(-1)
        i = data.draw(st.integers(0, flat.numel() - 1))
        if t.dtype == torch.bool:
            flat.view(torch.uint8)[i] = data.draw(st.integers(0, 255))
        elif t.is_floating_point():
            flat[i] = data.draw(st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e30]))
        else:
            flat[i] = data.draw(st.sampled_from([-1, 0, 1, 7, 8, 11, 12, 13, 10 ** 6, -2 ** 62, 2 ** 62]))
    elif action == "shorter" and t.dim() and len(t):
        t = t[:-1]
    else:
        t = torch.cat([t, t[:1]]) if t.dim() and len(t) else t.reshape(1, *t.shape)
    tensors[name] = t.contiguous()
    save_file(tensors, file)


def _corrupt(data, path, others):
    files = [f for f in FILES if os.path.exists(os.path.join(path, f))]
    name = data.draw(st.sampled_from(files))
    file = os.path.join(path, name)
    kinds = ["truncate", "flip", "json", "empty", "delete", "swap", "foreign", "deep"]
    kinds += ["edit", "edit", "edit"] if name.endswith(".json") else ["header", "header", "tensor", "tensor"]
    kind = data.draw(st.sampled_from(kinds))
    with open(file, "rb") as f:
        raw = f.read()
    if kind == "truncate":
        _put(file, raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif kind == "flip" and raw:
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        _put(file, bytes(buf))
    elif kind == "json":
        _write_doc(file, data.draw(JSON))
    elif kind == "empty":
        _put(file, b"")
    elif kind == "delete":
        os.remove(file)
    elif kind == "swap":                # two files of the export trade places
        other = os.path.join(path, data.draw(st.sampled_from([f for f in files if f != name])))
        tmp = file + ".swap"
        os.replace(file, tmp)
        os.replace(other, file)
        os.replace(tmp, other)
    elif kind == "foreign":             # the same file from another export
        src = os.path.join(data.draw(st.sampled_from(others)), name)
        if os.path.exists(src):
            shutil.copyfile(src, file)
        else:
            os.remove(file)
    elif kind == "deep":                # JSON nested far past any parser's recursion limit
        depth = data.draw(st.sampled_from([100, 1000, 100_000]))
        _put(file, b"[" * depth + b"]" * depth)
    elif _parses(file, kind):           # (an earlier corruption may have left a file that does not)
        {"edit": _edit_json, "header": _edit_header, "tensor": _edit_tensor}[kind](data, file)


def _parses(file, kind) -> bool:
    """The file is still what an edit of this kind needs: JSON, or a valid safetensors file."""
    try:
        if kind == "edit":
            _read_doc(file)
            return True
        return bool(load_file(file))
    except Exception:
        return False


def _fuzz(data, pristine):
    name = data.draw(st.sampled_from(sorted(pristine)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "export")
        shutil.copytree(pristine[name], path)
        for _ in range(data.draw(st.integers(1, 2))):
            _corrupt(data, path, [p for n, p in sorted(pristine.items()) if n != name])
        with _time_limit(CASE_SECONDS):
            _load_or_refuse(path)


FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_corrupted_export_loads_and_recommends_or_raises_export_error(pristine, data):
    _fuzz(data, pristine)


def _slow_selected(config) -> bool:
    """pytest's -m names `slow` (the marker is registered, but nothing deselects it by default)."""
    expr = config.getoption("markexpr") or ""
    return "slow" in expr.replace("not slow", "")


@pytest.mark.slow
@settings(max_examples=3000, **FUZZ)
@given(data=st.data())
def test_corrupted_export_many_more_cases(pristine, request, data):
    if not _slow_selected(request.config):
        pytest.skip("3,000 fuzz cases: run with -m slow")
    _fuzz(data, pristine)
