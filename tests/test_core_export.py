"""The export directory and the Recommender facade: exact round trip, external ids, seen-item
exclusion, errors on unknown users and damaged exports, no pickle."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from recsys import Recommender
from recsys.train.build import build_scorer, csr
from recsys.data.prepare import prepare_files
from recsys.serve.export import ExportError, load_export, save_export
from recsys.eval.ranking import topk

from helpers import write_csv


def prepared(tmp_path, string_ids: bool):
    """8 users x 12 items with string ids ("u3", "m5") or int ids (103, 505); item 11 has no
    interaction (cold)."""
    uid = (lambda u: f"u{u}") if string_ids else (lambda u: 100 + u)
    iid = (lambda i: f"m{i}") if string_ids else (lambda i: 500 + i)
    rng = np.random.default_rng(0)
    train = [(uid(u), iid(int(i))) for u in range(8) for i in rng.choice(11, size=4, replace=False)]
    test = [(uid(u), iid((u + 5) % 11)) for u in range(8)]
    items = [(iid(i), f"title {i} {'red' if i % 2 else 'blue'} {'big' if i % 3 else 'small'}") for i in range(12)]
    return prepare_files(train=write_csv(tmp_path / "train.csv", ["user", "item"], train),
                         test=write_csv(tmp_path / "test.csv", ["user", "item"], test),
                         items=write_csv(tmp_path / "items.csv", ["item", "title"], items),
                         valid_ratio=0.0)


def trained_like(prep, variant="hybrid", seed=0, **model):
    """A scorer with random non-trivial parameters (as if trained)."""
    torch.manual_seed(seed)
    s = build_scorer(prep, variant=variant, dim=8, **model)
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn_like(p))
    return s.eval()


def export(tmp_path, prep, scorer, name="export"):
    seen = csr(prep.train, prep.n_users)
    return save_export(str(tmp_path / name), scorer, prep.users, prep.items, prep.tokens,
                       prep.tokenizer, seen, torch.from_numpy(prep.bags.idf), prep.item_titles,
                       meta={"note": "x"}), seen


@pytest.mark.parametrize("variant, extra", [("collaborative", {}), ("content", {}), ("hybrid", {}),
                                            ("hybrid", {"learn_alpha": True, "alpha": 0.3})])
def test_round_trip_gives_identical_scores(tmp_path, variant, extra):
    """from_pretrained reproduces the in-memory scorer exactly: state, scores and top-k."""
    prep = prepared(tmp_path, string_ids=True)
    scorer = trained_like(prep, variant, **extra)
    path, seen = export(tmp_path, prep, scorer)
    rec = Recommender.from_pretrained(path)
    assert rec.scorer.config == scorer.config
    for k, v in scorer.state_dict().items():
        assert torch.equal(rec.scorer.state_dict()[k], v), k
    users = torch.arange(prep.n_users)
    with torch.no_grad():
        assert torch.equal(rec.scores(prep.users.ids), scorer(users))
    items, scores = topk(scorer, users, 5, seen)
    ids, sc = rec.recommend(prep.users.ids, k=5)
    assert ids.tolist() == [[prep.items.ids[i] for i in row] for row in items.tolist()]
    assert np.array_equal(sc, scores.numpy())


def test_export_metadata_round_trip(tmp_path):
    """Vocabularies, titles, idf, tokenizer, seen CSR and meta come back as saved."""
    prep = prepared(tmp_path, string_ids=True)
    path, seen = export(tmp_path, prep, trained_like(prep))
    e = load_export(path)
    assert e["users"].ids == prep.users.ids and e["items"].ids == prep.items.ids
    assert e["tokens"].ids == prep.tokens.ids and e["tokens"].unk == "[UNK]"
    assert e["titles"] == prep.item_titles and e["titles"][prep.items.get("m3")] == "title 3 red small"
    assert np.array_equal(e["token_idf"].numpy(), prep.bags.idf)
    assert e["tokenizer"] == prep.tokenizer
    assert torch.equal(e["seen"][0], seen[0]) and torch.equal(e["seen"][1], seen[1])
    assert e["config"]["meta"] == {"note": "x"}


def test_string_ids_and_single_user_form(tmp_path):
    """String ids come back as the external str ids; recommend("u3") gives 1-D arrays equal to
    row 0 of recommend(["u3"]) and to u3's row of the full batch."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    rec = Recommender.from_pretrained(path)
    ids, sc = rec.recommend("u3", k=4)
    bids, bsc = rec.recommend(["u3"], k=4)
    all_ids, all_sc = rec.recommend(["u0", "u3", "u7"], k=4)
    assert ids.shape == (4,) and sc.shape == (4,) and bids.shape == (1, 4)
    assert ids.tolist() == bids[0].tolist() == all_ids[1].tolist()
    assert np.array_equal(sc, bsc[0])
    np.testing.assert_allclose(sc, all_sc[1], rtol=1e-6, atol=1e-6)   # other batch: BLAS rounding
    assert all(isinstance(i, str) and i.startswith("m") for i in ids)
    assert np.all(np.diff(sc) <= 0)


def test_int_ids(tmp_path):
    """Int ids stay ints (Python/numpy integers, not strings) through the export, and an int
    user id is accepted as a single user."""
    prep = prepared(tmp_path, string_ids=False)
    assert prep.users.ids == list(range(100, 108))
    path, seen = export(tmp_path, prep, trained_like(prep))
    rec = Recommender.from_pretrained(path)
    ids, _ = rec.recommend(103, k=5)
    assert ids.dtype.kind == "i"
    items, _ = topk(rec.scorer, torch.tensor([3]), 5, seen)
    assert ids.tolist() == [500 + i for i in items[0].tolist()]
    bids, _ = rec.recommend([107, 100], k=5)
    assert bids.shape == (2, 5) and bids.dtype.kind == "i"
    with pytest.raises(KeyError):
        rec.recommend("103", k=5)        # the string "103" is not the int id 103


def test_seen_items_excluded_by_default(tmp_path):
    """Training items of a user never appear by default; exclude_seen=False ranks the whole
    catalog (the seen items included, in score order)."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep, "collaborative"))
    rec = Recommender.from_pretrained(path)
    n = prep.n_items
    seen_of = {prep.users.ids[u]: {prep.items.ids[i] for uu, i in prep.train if uu == u}
               for u in range(prep.n_users)}
    ids, sc = rec.recommend(prep.users.ids, k=n - 4)          # every user has 4 training items
    for row, u in zip(ids, prep.users.ids):
        assert not seen_of[u] & set(row)
    assert np.isfinite(sc).all()
    ids_all, sc_all = rec.recommend(prep.users.ids, k=n, exclude_seen=False)
    scores = rec.scores(prep.users.ids).numpy()
    for r, u in enumerate(prep.users.ids):
        assert seen_of[u] <= set(ids_all[r])
        assert np.array_equal(sc_all[r], np.sort(scores[r])[::-1])
    # with the mask, a seen item is never handed out: one user asking for the whole catalog
    # gets the n - 4 items left; a batch that asks more than a user has left is refused
    ids_masked, sc_masked = rec.recommend("u0", k=n)
    assert len(ids_masked) == n - 4 and np.isfinite(sc_masked).all() and not seen_of["u0"] & set(ids_masked)
    b_ids, b_sc = rec.recommend(prep.users.ids, k=n)
    assert b_ids.shape == (len(prep.users.ids), n - 4) and np.isfinite(b_sc).all()
    assert (b_ids[0] == ids_masked).all()


def test_unknown_user_and_bad_k(tmp_path):
    """An unknown user id raises KeyError; k < 1 raises ValueError naming k; k above the
    catalog gives what there is."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    rec = Recommender.from_pretrained(path)
    with pytest.raises(KeyError, match="ghost"):
        rec.recommend("ghost")
    with pytest.raises(KeyError):
        rec.recommend(["u1", "ghost"])
    assert len(rec.recommend("u1", k=prep.n_items + 1)[0]) == len(rec.recommend("u1", k=prep.n_items)[0])
    with pytest.raises(ValueError, match="k=0 must be >= 1"):
        rec.recommend("u1", k=0)
    with pytest.raises(ValueError, match="k=-3 must be >= 1"):
        rec.recommend("u1", k=-3)


@pytest.mark.parametrize("keep", [0, 5, 100, "half", "minus1"])
def test_truncated_weights_raise_export_error(tmp_path, keep):
    """A truncated model.safetensors raises ExportError naming the file."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    f = os.path.join(path, "model.safetensors")
    data = open(f, "rb").read()
    n = {"half": len(data) // 2, "minus1": len(data) - 1}.get(keep, keep)
    with open(f, "wb") as fh:
        fh.write(data[:n])
    with pytest.raises(ExportError, match="model.safetensors"):
        Recommender.from_pretrained(path)
    with pytest.raises(ExportError, match="model.safetensors"):        # past the checksums too
        Recommender.from_pretrained(path, verify=False)


def test_wrong_format_version_and_format_raise_export_error(tmp_path):
    """config.json with another format_version, or not a recsys export, raises ExportError."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    f = os.path.join(path, "config.json")
    cfg = json.load(open(f))
    assert cfg["format_version"] == 1
    for change in ({"format_version": 2}, {"format_version": "1"}, {"format": "other"}):
        with open(f, "w") as fh:
            json.dump({**cfg, **change}, fh)
        with pytest.raises(ExportError, match="format"):
            Recommender.from_pretrained(path, verify=False)
    with open(f, "w") as fh:
        fh.write("{not json")
    with pytest.raises(ExportError, match="config.json is not valid JSON"):
        Recommender.from_pretrained(path, verify=False)


def test_mismatched_or_missing_files_raise_export_error(tmp_path):
    """Weights that do not fit config.json's sizes, or a missing file, raise ExportError."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    f = os.path.join(path, "config.json")
    cfg = json.load(open(f))
    with open(f, "w") as fh:
        json.dump({**cfg, "scorer": {**cfg["scorer"], "dim": 9}}, fh)
    with pytest.raises(ExportError, match="model.safetensors does not match config.json"):
        Recommender.from_pretrained(path, verify=False)
    with open(f, "w") as fh:
        json.dump(cfg, fh)
    Recommender.from_pretrained(path, verify=False)                  # restored: loads again
    os.remove(os.path.join(path, "extras.safetensors"))
    with pytest.raises(ExportError, match="missing"):
        Recommender.from_pretrained(path)
    with pytest.raises(ExportError, match="missing"):
        Recommender.from_pretrained(path, verify=False)
    with pytest.raises(ExportError):
        Recommender.from_pretrained(str(tmp_path / "nowhere"))


def test_export_has_no_pickle_and_only_expected_files(tmp_path):
    """The export holds JSON and safetensors only: no file starts with the pickle byte 0x80."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    names = sorted(os.listdir(path))
    assert names == ["checksums.json", "config.json", "extras.safetensors", "items.json", "model.safetensors",
                     "tokens.json", "users.json"]
    for name in names:
        with open(os.path.join(path, name), "rb") as fh:
            assert fh.read(1) != b"\x80", name
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]   # no temp dirs left


def test_save_over_existing_export_and_save_pretrained(tmp_path):
    """Saving over an existing export replaces it; save_pretrained re-exports identically."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep, seed=0))
    second = trained_like(prep, seed=1)
    export(tmp_path, prep, second)
    rec = Recommender.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(rec.scores(prep.users.ids), second(torch.arange(prep.n_users)))
    again = Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "copy")))
    a, b = rec.recommend(prep.users.ids, k=3), again.recommend(prep.users.ids, k=3)
    assert a[0].tolist() == b[0].tolist() and np.array_equal(a[1], b[1])
    assert again.titles == rec.titles and again.meta == {"note": "x"}


def test_resave_keeps_every_file_the_export_does_not_own(tmp_path):
    """Re-saving over an export replaces only the export's own files: a README the user put
    into it, a folder of notes, a symlink, and a thesis beside a config.json that merely claims
    the format are all still there, byte for byte (they were deleted before)."""
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep, seed=0))
    rec = Recommender.from_pretrained(path)
    exp = tmp_path / "mine"
    rec.save_pretrained(str(exp))
    (exp / "README.md").write_text("# my model\n")
    (exp / "notes").mkdir()
    (exp / "notes" / "a.txt").write_text("a\n")
    os.symlink("README.md", exp / "link")
    rec.save_pretrained(str(exp))
    assert (exp / "README.md").read_text() == "# my model\n" and (exp / "notes" / "a.txt").read_text() == "a\n"
    assert os.readlink(exp / "link") == "README.md"
    assert Recommender.from_pretrained(str(exp)).recommend(prep.users.ids[0], k=3)[0].tolist() == \
        rec.recommend(prep.users.ids[0], k=3)[0].tolist()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text('{"format": "recsys-export"}')
    (fake / "thesis.tex").write_text("\\section{One}\n")
    rec.save_pretrained(str(fake))
    assert (fake / "thesis.tex").read_text() == "\\section{One}\n"
    assert Recommender.from_pretrained(str(fake)).items.ids == rec.items.ids
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".mine", ".fake"))]   # no temp dirs left


class _Payload:
    """Unpickling this runs code: it creates the file named in its argument."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("target", ["model.safetensors", "extras.safetensors", "model.pt", "pytorch_model.bin"])
def test_planted_pickle_payload_is_never_run(tmp_path, target):
    """A pickle payload put in place of a weights file is refused with ExportError (and one
    dropped next to them is ignored); in no case is it unpickled (its side effect never happens)."""
    import pickle
    prep = prepared(tmp_path, string_ids=True)
    path, _ = export(tmp_path, prep, trained_like(prep))
    marker = tmp_path / "PWNED"
    with open(os.path.join(path, target), "wb") as fh:
        pickle.dump(_Payload(str(marker)), fh)
    if target.endswith(".safetensors"):
        with pytest.raises(ExportError, match=target):
            Recommender.from_pretrained(path)
    else:
        Recommender.from_pretrained(path).recommend("u1", k=2)     # extra files are not read
    assert not marker.exists()


@pytest.mark.parametrize("fail_at", ["items.json", "extras.safetensors"])
def test_crash_mid_write_leaves_the_old_export_intact(tmp_path, monkeypatch, fail_at):
    """A save that dies half way (here: an error while writing one of the files) leaves the
    previous export at the path untouched and loadable, and no half directory behind."""
    import recsys.serve.export as ex
    prep = prepared(tmp_path, string_ids=True)
    first = trained_like(prep, seed=0)
    path, _ = export(tmp_path, prep, first)
    before = {n: open(os.path.join(path, n), "rb").read() for n in os.listdir(path)}
    real_json, real_st = ex._write_json, ex.save_file

    def boom_json(p, obj):
        if p.endswith(fail_at):
            raise OSError("disk full")
        return real_json(p, obj)

    def boom_st(tensors, p, *a, **k):
        if p.endswith(fail_at):
            raise OSError("disk full")
        return real_st(tensors, p, *a, **k)

    monkeypatch.setattr(ex, "_write_json", boom_json)
    monkeypatch.setattr(ex, "save_file", boom_st)
    with pytest.raises(OSError, match="disk full"):
        export(tmp_path, prep, trained_like(prep, seed=1))
    assert {n: open(os.path.join(path, n), "rb").read() for n in os.listdir(path)} == before
    monkeypatch.undo()
    rec = Recommender.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(rec.scores(prep.users.ids), first(torch.arange(prep.n_users)))
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]


def test_save_refuses_foreign_folder_and_file(tmp_path):
    """save_pretrained never deletes what is not an export: a non-empty folder without a recsys
    config.json, or a regular file, is refused with an ExportError and left byte for byte."""
    prep = prepared(tmp_path, string_ids=True)
    rec = Recommender.from_pretrained(export(tmp_path, prep, trained_like(prep))[0])
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('hi')\n")
    (proj / "notes.txt").write_text("notes\n")
    with pytest.raises(ExportError, match="not a recsys export"):
        rec.save_pretrained(str(proj))
    assert sorted(os.listdir(proj)) == ["notes.txt", "src"]
    assert (proj / "src" / "main.py").read_text() == "print('hi')\n"
    (proj / "config.json").write_text('{"format": "something-else"}')       # a foreign config.json
    with pytest.raises(ExportError, match="not a recsys export"):
        rec.save_pretrained(str(proj))
    assert (proj / "notes.txt").exists()
    f = tmp_path / "file.bin"
    f.write_bytes(b"data")
    with pytest.raises(ExportError, match="not a directory"):
        rec.save_pretrained(str(f))
    assert f.read_bytes() == b"data"
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".proj", ".file"))]   # no temp dirs left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Recommender.from_pretrained(rec.save_pretrained(str(empty))).items.ids == rec.items.ids


def test_export_permissions_follow_umask(tmp_path):
    """Exports are readable by others under the usual umask 022 (not 0700 / 0600 from mkdtemp)."""
    prep = prepared(tmp_path, string_ids=True)
    old = os.umask(0o022)
    try:
        path, _ = export(tmp_path, prep, trained_like(prep))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o755
    for name in os.listdir(path):
        assert os.stat(os.path.join(path, name)).st_mode & 0o777 == 0o644, name
