"""The README's marked Python examples run as written (against the embedded MovieLens)."""
from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(name: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(rf"<!-- readme-example: {name} .*?-->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no example {name!r}"
    return m.group(1)


def test_ranking_api_example(monkeypatch):
    monkeypatch.chdir(ROOT)
    ns: dict = {}
    exec(compile(_example("ranking-api"), "README.md:ranking-api", "exec"), ns)
    rec = ns["rec"]
    ids, _ = rec.recommend(1, k=10, where={"genres": "Comedy"})
    genres = dict(zip(ns["movies"].movieId, ns["movies"].genres))
    assert len(ids) == 10 and all("Comedy" in genres[i] for i in ids)
    assert 260 not in rec.similar_items(260, k=10)[0]
    assert not {356, 318} & set(rec.recommend(1, k=10, exclude=[356, 318])[0])
