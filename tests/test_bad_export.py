"""The export loader trusts none of its files: each damaged or inconsistent export below is
refused with an ExportError whose one-line message names the file at fault, before anything
is built from it (a bad `device` argument: a ValueError naming the argument). Each test failed
on the loader before these checks; docs/bad_input.md ("Export loader") lists them."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import recsys.serve.export as export_module
from recsys import Recommender
from recsys.serve.export import ExportError
from recsys.train.build import build_memory, csr

from test_core_export import export, prepared, trained_like

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _refused(path, file: str, match: str | None = None, **kw) -> str:
    """Loading raises ExportError, one line, naming `file`; returns the message. The edited
    exports here would also fail their checksums (tests/test_export_checksums.py): these checks
    are loaded without them, as an export whose checksums.json was deleted or rewritten is."""
    kw.setdefault("verify", False)
    with pytest.raises(ExportError) as e:
        Recommender.from_pretrained(path, **kw)
    msg = str(e.value)
    assert type(e.value) is ExportError and "\n" not in msg and file in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def _json(path, name):
    with open(os.path.join(path, name), encoding="utf-8") as f:
        return json.load(f)


def _write(path, name, obj):
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _text(path, name, text):
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def learned(tmp_path):
    prep = prepared(tmp_path, string_ids=True)
    return export(tmp_path, prep, trained_like(prep))[0]


@pytest.fixture
def bpe_export(tmp_path):
    """A hybrid whose tokenizer is bpe: the export holds the Hugging Face tokenizer.json."""
    from recsys.data.prepare import prepare_files
    from helpers import write_csv
    train = [(f"u{u}", f"m{(u + j) % 10}") for u in range(6) for j in range(3)]
    items = [(f"m{i}", f"star {i} wars title {'red' if i % 2 else 'blue'}") for i in range(10)]
    prep = prepare_files(train=write_csv(tmp_path / "train.csv", ["user", "item"], train),
                         test=write_csv(tmp_path / "test.csv", ["user", "item"], [("u0", "m5")]),
                         items=write_csv(tmp_path / "items.csv", ["item", "title"], items), valid_ratio=0.0,
                         tokens={"kind": "bpe", "vocab_size": 40, "min_frequency": 1})
    return export(tmp_path, prep, trained_like(prep), name="bpe")[0]


@pytest.fixture
def memory_exports(tmp_path):
    """An EASE export and a blend (EASE + ItemKNN) export of the same data."""
    prep = prepared(tmp_path, string_ids=True)
    seen = csr(prep.train, prep.n_users)
    from recsys.serve.export import save_export
    out = {}
    for name, model in (("ease", {"kind": "ease", "lam": 1.0}),
                        ("blend", {"kind": "blend", "alpha": 0.5, "first": {"kind": "ease", "lam": 1.0},
                                   "second": {"kind": "itemknn", "k": 4}})):
        out[name] = save_export(str(tmp_path / name), build_memory(prep, model), prep.users, prep.items,
                                prep.tokens, prep.tokenizer, seen, torch.from_numpy(prep.bags.idf))
    return out


# --- 1. tokenizer.json -------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["garbage", "[" * 200_000 + "]" * 200_000, "[]", '{"model": 1}',
                                     '{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": -1}}}'])
def test_bad_tokenizer_json(bpe_export, content):
    """Garbage, JSON nested 200,000 deep, or JSON the tokenizers library refuses (it raises a
    bare Exception): ExportError naming tokenizer.json."""
    Recommender.from_pretrained(bpe_export).recommend("u1", k=2)
    _text(bpe_export, "tokenizer.json", content)
    _refused(bpe_export, "tokenizer.json")


def test_missing_tokenizer_json(bpe_export):
    os.remove(os.path.join(bpe_export, "tokenizer.json"))
    _refused(bpe_export, "tokenizer.json", "missing")


# --- 2. config.json structure -------------------------------------------------------------------

def test_config_nested_200000_deep(learned):
    _text(learned, "config.json", "[" * 200_000 + "]" * 200_000)
    _refused(learned, "config.json", "nested too deeply")


@pytest.mark.parametrize("doc", [[1, 2], "recsys-export", 1, None])
def test_config_not_an_object(learned, doc):
    _write(learned, "config.json", doc)
    _refused(learned, "config.json", "not a recsys export")


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["scorer"].pop("n_items"), "scorer has no 'n_items'"),
    (lambda c: c.pop("tokenizer"), "tokenizer must be a JSON object"),
    (lambda c: c.__setitem__("scorer", []), "scorer must be a JSON object"),
    (lambda c: c["tokenizer"].__setitem__("kind", ["word"]), "tokenizer.kind"),
    (lambda c: c["tokenizer"].__setitem__("prefix_fields", "genres"), "tokenizer.prefix_fields must be a list"),
    (lambda c: c.__setitem__("meta", [1]), "meta must be a JSON object"),
])
def test_config_missing_or_mistyped_entries(learned, edit, match):
    cfg = _json(learned, "config.json")
    edit(cfg)
    _write(learned, "config.json", cfg)
    _refused(learned, "config.json", match)


def test_extras_missing_a_tensor(learned):
    """extras.safetensors without seen_indices (a KeyError when its tensors were looked up)."""
    f = os.path.join(learned, "extras.safetensors")
    t = load_file(f)
    del t["seen_indices"]
    save_file(t, f)
    _refused(learned, "extras.safetensors", "missing tensors ['seen_indices']")


def test_blend_part_missing_a_key(memory_exports):
    path = memory_exports["blend"]
    cfg = _json(path, "config.json")
    del cfg["scorer"]["alpha"]
    _write(path, "config.json", cfg)
    _refused(path, "config.json", "scorer has no 'alpha'")


# --- 3. vocabularies ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["users.json", "items.json", "tokens.json", "config.json"])
def test_reads_are_bounded_by_the_declared_sizes(learned, name):
    """A vocabulary pointing at /dev/zero grew the loader to 23.7 GB: a device or FIFO is never
    read, and a file larger than config.json's sizes allow is refused before it is read."""
    p = os.path.join(learned, name)
    keep = open(p, "rb").read()
    try:
        os.remove(p)
        os.symlink("/dev/zero", p)
        _refused(learned, name, "is not a regular file")
        os.remove(p)
        os.mkfifo(p)                                     # open() of a FIFO would block for ever
        _refused(learned, name, "is not a regular file")
        os.remove(p)
        with open(p, "wb") as f:                         # sparse: 64 GB of nothing, never read
            f.truncate(64 << 30)
        _refused(learned, name, "more than the")
    finally:
        os.remove(p)
        open(p, "wb").write(keep)
    assert Recommender.from_pretrained(learned) is not None


@pytest.mark.parametrize("name, size", [("users.json", "n_users is 8"), ("items.json", "n_items is 12"),
                                        ("tokens.json", "n_tokens is 18")])
def test_short_vocabulary(learned, name, size):
    """One id fewer than the model has: users.json used to load silently, items.json to fail
    later in recommend (IndexError)."""
    obj = _json(learned, name)
    obj["ids"] = obj["ids"][:-1]
    _write(learned, name, obj)
    _refused(learned, name, size)


@pytest.mark.parametrize("name, edit, match", [
    ("users.json", lambda o: o.__setitem__("ids", o["ids"][:-1] + [["u7"]]), "all strings or all 64-bit integers"),
    ("users.json", lambda o: o.__setitem__("ids", list(range(7)) + [True]), "all strings or all 64-bit integers"),
    ("users.json", lambda o: o.__setitem__("ids", list(range(7)) + [2 ** 64]), "all strings or all 64-bit integers"),
    ("users.json", lambda o: o.__setitem__("ids", o["ids"][:-1] + [o["ids"][0]]), "appears more than once"),
    ("users.json", lambda o: o.__setitem__("unk", ["x"]), "unk=['x'] is not one of its ids"),
    ("items.json", lambda o: o.__setitem__("ids", o["ids"][:-1] + [None]), "all strings or all 64-bit integers"),
    ("items.json", lambda o: o.__setitem__("titles", o["titles"][:-1]), "titles must be null or a list of 12"),
    ("items.json", lambda o: o.pop("ids"), "must be a JSON object with a list 'ids'"),
    ("tokens.json", lambda o: o.__setitem__("ids", list(range(18))), "tokens ids must be strings"),
    ("tokens.json", lambda o: o.__setitem__("extra", 1), "unknown key 'extra'"),
])
def test_malformed_vocabulary(learned, name, edit, match):
    obj = _json(learned, name)
    edit(obj)
    _write(learned, name, obj)
    _refused(learned, name, match)


def test_vocabulary_not_an_object(learned):
    _write(learned, "users.json", ["u0", "u1"])
    _refused(learned, "users.json", "must be a JSON object")


def test_token_idf_does_not_match_tokens(learned):
    f = os.path.join(learned, "extras.safetensors")
    t = load_file(f)
    t["token_idf"] = t["token_idf"][:-1].contiguous()
    save_file(t, f)
    _refused(learned, "extras.safetensors", "token_idf has 17 entries; tokens.json has 18")


# --- 4. sizes against tensor shapes, before anything is built -----------------------------------

@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if the loader gets as far as building a model."""
    def built(*a, **k):
        raise AssertionError("a model was built from an export that should have been refused")
    monkeypatch.setattr(export_module, "model_from_state", built)


@pytest.mark.parametrize("key, value, file, match", [
    ("n_items", 3e8, "config.json", "scorer.n_items must be an integer >= 0, got 300000000.0"),
    ("n_items", 300_000_000, "model.safetensors", "config.json's sizes give"),
    ("n_users", 9, "model.safetensors", "hist_indptr has shape (9,); config.json's sizes give (10,)"),
    ("n_tokens", 17, "model.safetensors", "token_emb.weight has shape (18, 8); config.json's sizes give (17, 8)"),
    ("dim", 9, "model.safetensors", "does not match config.json"),
    ("n_users", -8, "config.json", "scorer.n_users must be an integer >= 0"),
    ("n_users", True, "config.json", "scorer.n_users must be an integer >= 0, got True"),
    ("n_users", "8", "config.json", "scorer.n_users must be an integer >= 0, got '8'"),
    ("n_users", 2 ** 64, "config.json", "scorer.n_users must be an integer >= 0"),
    ("alpha", float("nan"), "config.json", "scorer.alpha must be a finite number"),
    ("item_bias", 1, "config.json", "scorer.item_bias must be true or false"),
    ("learn_alpha", True, "model.safetensors", "missing tensors ['alpha_logit']"),
    ("token_pre_dim", 4, "config.json", "token_pre_dim=4"),
])
def test_learned_sizes_checked_against_shapes_before_building(learned, nothing_built, key, value, file, match):
    """An edited size in config.json is refused from the safetensors header alone: n_items=3e8
    used to allocate 2.3 GB (tables built from config sizes) before anything was checked."""
    cfg = _json(learned, "config.json")
    cfg["scorer"][key] = value
    _write(learned, "config.json", cfg)
    _refused(learned, file, match)


M, C = "model.safetensors", "config.json"


@pytest.mark.parametrize("model, edit, file, match", [
    ("ease", lambda s: s.__setitem__("n_items", 13), M, "ease_B has shape (12, 12); config.json's sizes give (13, 13)"),
    ("ease", lambda s: s.__setitem__("n_users", 7), M, "hist_indptr has shape (9,); config.json's sizes give (8,)"),
    ("ease", lambda s: s.__setitem__("kind", "itemknn"), M, "missing tensors ['w_indices', 'w_indptr', 'w_values']"),
    ("ease", lambda s: s.__setitem__("kind", "knn"), C, "scorer.kind='knn' is not a model kind"),
    ("ease", lambda s: s.__setitem__("lam", "1"), C, "scorer.lam must be a finite number"),
    ("ease", lambda s: s.__setitem__("max_products", -1e400), C, "scorer.max_products must be a finite number"),
    ("blend", lambda s: s["second"].__setitem__("kind", "userknn"), M, "second.w_indptr has shape (13,)"),
    ("blend", lambda s: s.__setitem__("n_items", 13), C, "scorer.first.n_items=12 differs from scorer.n_items=13"),
    ("blend", lambda s: s.__setitem__("alpha", 2), C, "alpha in [0, 1]"),
    ("blend", lambda s: s.pop("second"), C, "scorer has no 'second'"),
    ("blend", lambda s: s.__setitem__("first", {**s["first"], "kind": "popularity"}), M, "missing tensors ['first.pop']"),
])
def test_memory_and_blend_sizes_checked_before_building(memory_exports, nothing_built, model, edit, file, match):
    """EASE's (I, I) table, the KNN neighbour CSR, and a blend's parts (tensors `first.*` /
    `second.*`, configs under "first" / "second") against config.json."""
    path = memory_exports[model]
    cfg = _json(path, "config.json")
    edit(cfg["scorer"])
    _write(path, "config.json", cfg)
    _refused(path, file, match)


@pytest.mark.parametrize("tensor, value, match", [
    ("hist_indices", 12, "hist_indices holds index 12, outside [0, 12)"),
    ("hist_indices", -1, "hist_indices holds index -1, outside [0, 12)"),
    ("hist_indptr", 99, "hist_indptr is not a CSR row pointer"),
    ("tok_indices", 18, "tok_indices holds index 18, outside [0, 18)"),
    ("item_emb.weight", float("nan"), "item_emb.weight holds NaN or infinite values"),
    ("item_warm", 7, "item_warm holds bytes other than 0 and 1"),
])
def test_tensor_values_checked_before_building(learned, nothing_built, tensor, value, match):
    """Indices out of range used to fail (or read out of bounds) only when scoring."""
    f = os.path.join(learned, "model.safetensors")
    t = load_file(f)
    flat = t[tensor].reshape(-1)
    (flat.view(torch.uint8) if flat.dtype == torch.bool else flat)[-1] = value
    save_file(t, f)
    _refused(learned, "model.safetensors", match)


def test_valid_exports_still_load_to_the_same_scores(learned, memory_exports):
    """The checks refuse nothing that is consistent (round trips: tests/test_core_export.py)."""
    for path in (learned, *memory_exports.values()):
        a, b = Recommender.from_pretrained(path), Recommender.from_pretrained(path)
        assert torch.equal(a.scores(a.users.ids), b.scores(b.users.ids))


# --- 5. the device argument ---------------------------------------------------------------------

@pytest.mark.parametrize("device, match", [("tpu0", "device='tpu0' is not a torch device"),
                                           ("meta", "device='meta': an export loads onto 'cpu', 'cuda' or 'mps'"),
                                           (None, "device=None is not a torch device")])
def test_bad_device_is_named(learned, device, match):
    """A device torch does not know was reported as a corrupted model.safetensors."""
    with pytest.raises(ValueError) as e:
        Recommender.from_pretrained(learned, device=device)
    assert match in str(e.value) and "\n" not in str(e.value) and "corrupted" not in str(e.value)
    with pytest.raises(ValueError, match="tpu0"):         # checked first, before the directory
        Recommender.from_pretrained("/no/such/export", device="tpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine(learned):
    """It used to fail inside safetensors with a pin_memory RuntimeError."""
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA is not available on this machine") as e:
            Recommender.from_pretrained(learned, device=device)
        assert f"device={device!r}" in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_past_the_last_gpu(learned):
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"has {n} CUDA device"):
        Recommender.from_pretrained(learned, device=f"cuda:{n}")


# --- 6. format_version --------------------------------------------------------------------------

@pytest.mark.parametrize("version, match", [("1", "format_version is '1' (str), not an integer"),
                                            (True, "format_version is True (bool), not an integer"),
                                            (1.0, "format_version is 1.0 (float), not an integer"),
                                            (None, "format_version is None (NoneType), not an integer")])
def test_format_version_of_another_type(learned, version, match):
    """"1" was reported as "has version 1; reads version 1"; True and 1.0 loaded (== 1)."""
    cfg = _json(learned, "config.json")
    cfg["format_version"] = version
    _write(learned, "config.json", cfg)
    _refused(learned, "config.json", match)
