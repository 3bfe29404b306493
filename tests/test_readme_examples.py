"""The marked Python examples of README.md and docs/*.md run as written (against the embedded
MovieLens). An example is a `<!-- readme-example: NAME ... -->` line followed by a ```python block;
each name must be marked exactly once across those files."""
from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _example(name: str) -> tuple[str, str]:
    """(the example's code, the file it is in)."""
    found = []
    for rel in DOCS:
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        markers = re.findall(rf"<!-- readme-example: {re.escape(name)}(?=\s)[^\n]*?-->", text, re.S)
        blocks = re.findall(rf"<!-- readme-example: {re.escape(name)}(?=\s)[^\n]*?-->\s*```python\n(.*?)```", text, re.S)
        assert len(markers) == len(blocks), (
            f"{rel}: the readme-example marker {name!r} is not followed by a ```python block")
        found += [(code, rel) for code in blocks]
    assert found, f"no example {name!r} in {', '.join(DOCS)} (a marked example was moved or deleted)"
    assert len(found) == 1, f"example {name!r} is marked {len(found)} times: {[rel for _, rel in found]}"
    return found[0]


def _run(name: str) -> dict:
    code, rel = _example(name)
    ns: dict = {}
    exec(compile(code, f"{rel}:{name}", "exec"), ns)
    return ns


def test_every_marked_example_is_tested():
    names = set()
    for rel in DOCS:
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        names |= set(re.findall(r"<!-- readme-example: ([\w-]+)", text))
    tested = {n.removeprefix("test_").removesuffix("_example").replace("_", "-")
              for n in globals() if n.startswith("test_") and n.endswith("_example")}
    assert names == tested, f"marked examples {sorted(names)}, tested {sorted(tested)}"


def test_example_lookup_fails_clearly():
    with pytest.raises(AssertionError, match="no example 'no-such-example'"):
        _example("no-such-example")


def test_quickstart_example(monkeypatch, tmp_path):
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")   # the example's relative data paths
    monkeypatch.chdir(tmp_path)                                 # and its export, written here
    ns = _run("quickstart")
    rec = ns["rec"]
    assert (tmp_path / "itemknn-export" / "checksums.json").exists()
    genres = dict(zip(ns["movies"].movieId, ns["movies"].genres))
    assert len(ns["ids"]) == 10 and all("Comedy" in genres[i] for i in ns["ids"])
    assert rec.recommend([1, 2], k=10)[0].shape == (2, 10)


def test_ranking_api_example(monkeypatch):
    monkeypatch.chdir(ROOT)
    ns = _run("ranking-api")
    rec = ns["rec"]
    ids, _ = rec.recommend(1, k=10, where={"genres": "Comedy"})
    genres = dict(zip(ns["movies"].movieId, ns["movies"].genres))
    assert len(ids) == 10 and all("Comedy" in genres[i] for i in ids)
    assert 260 not in rec.similar_items(260, k=10)[0]
    assert not {356, 318} & set(rec.recommend(1, k=10, exclude=[356, 318])[0])


def test_estimators_example(monkeypatch):
    monkeypatch.chdir(ROOT)
    ns = _run("estimators")
    model = ns["model"]
    assert model.is_fitted and set(ns["ids"].tolist()) <= {2, 5, 10, 32, 318, 589, 4993} and len(ns["ids"]) == 5
    assert set(ns["similar"].tolist()) <= {2, 3, 4, 5, 6} and len(ns["similar"]) == 3
    assert not ns["blend"].is_fitted and ns["blend"].get_params()["first"]["k"] == 50


def test_notebook_example(monkeypatch, tmp_path):
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    ns = _run("notebook")
    assert len(ns["ids"]) == 5 and 260 not in ns["near"] and len(ns["near"]) == 5
    assert (tmp_path / "ease-notebook" / "checksums.json").exists()
    assert ns["served"] == ns["ids"].tolist()
