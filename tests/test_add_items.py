"""New items without retraining (recsys/models/extend.py, Recommender.add_items): every variant scores
added items exactly as the same model fitted with those items present (never interacted with);
the Recommender tokenises their text with the stored tokenizer; a new item whose text matches a
user's taste ranks above unrelated ones; exports keep them."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from recsys import Recommender
from recsys.train.build import build_memory, build_scorer, csr
from recsys.data.content import TokenBags
from recsys.data.prepare import prepare_files, prepare_movielens
from recsys.serve.export import save_export
from recsys.models.extend import add_items

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def full():
    """MovieLens with a random split, its first 2,500 movies (EASE stays quick): the catalog
    has items with no training interaction."""
    prep = prepare_movielens(os.path.join(ROOT, "data", "ml-latest-small"),
                             split={"kind": "random", "valid": 0.1, "test": 0.1, "seed": 5})
    return _drop_items(prep, np.arange(2500, prep.n_items))[0]


def _bag_rows(bags: TokenBags, rows: np.ndarray) -> TokenBags:
    starts, ends = bags.indptr[rows], bags.indptr[rows + 1]
    pos = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(rows) else np.zeros(0, np.int64)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=indptr[1:])
    return TokenBags(indptr, bags.indices[pos], bags.weights[pos], bags.idf)


def _drop_items(prep, drop: np.ndarray):
    """prep without the items `drop` (cold ones): what a model fitted before they existed saw.
    Returns (reduced prep, kept item indices of the full catalog)."""
    from recsys.data.vocab import Vocab
    keep = np.setdiff1d(np.arange(prep.n_items), drop)
    new_index = np.full(prep.n_items, -1)
    new_index[keep] = np.arange(len(keep))

    def remap(p):
        p = p[np.isin(p[:, 1], keep)]
        return np.stack([p[:, 0], new_index[p[:, 1]]], 1)
    red = dataclasses.replace(prep, items=Vocab([prep.items.ids[i] for i in keep]),
                              train=remap(prep.train), valid=remap(prep.valid), test=remap(prep.test),
                              bags=_bag_rows(prep.bags, keep), item_titles=[prep.item_titles[i] for i in keep])
    return red, keep


def _reorder(prep, order: np.ndarray):
    """prep with its catalog in the order `order` (full indices), so that ties between equal
    similarities break the same way as in the grown catalog."""
    from recsys.data.vocab import Vocab
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))

    def remap(p):
        return np.stack([p[:, 0], pos[p[:, 1]]], 1)
    return dataclasses.replace(prep, items=Vocab([prep.items.ids[i] for i in order]), train=remap(prep.train),
                               valid=remap(prep.valid), test=remap(prep.test), bags=_bag_rows(prep.bags, order),
                               item_titles=[prep.item_titles[i] for i in order])


@pytest.fixture(scope="module")
def split(full):
    """(the catalog before the 40 new items, their bags, the catalog that had them all along,
    in the grown order: old items, then the new ones)."""
    cold = np.flatnonzero(~full.item_warm())
    drop = np.sort(np.random.default_rng(0).choice(cold[full.bags.indptr[cold + 1] > full.bags.indptr[cold]], 40,
                                                   replace=False))
    red, keep = _drop_items(full, drop)
    return red, _bag_rows(full.bags, drop), _reorder(full, np.concatenate([keep, drop]))


MEMORY = [{"kind": "content_knn", "k": 30}, {"kind": "itemknn", "k": 30}, {"kind": "itemknn", "k": 30, "cold_k": 5},
          {"kind": "userknn", "k": 30, "cold_k": 5}, {"kind": "ease", "lam": 200.0, "cold_k": 5},
          {"kind": "popularity"},
          {"kind": "blend", "alpha": 0.8, "norm": "max", "first": {"kind": "ease", "lam": 200.0, "cold_k": 10},
           "second": {"kind": "content_knn", "k": 30}}]


def _users(prep):
    return torch.arange(0, prep.n_users, 13)


@pytest.mark.parametrize("model", MEMORY, ids=lambda m: m["kind"] + str(m.get("cold_k", "")))
def test_added_items_score_like_a_fit_that_had_them_memory(full, split, model):
    red, new, had = split
    grown = add_items(build_memory(red, model), new)
    assert grown.config.n_items == had.n_items
    ref = build_memory(had, model)
    u = _users(had)
    torch.testing.assert_close(grown(u), ref(u), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant,cold_k", [("content", 0), ("hybrid", 0), ("hybrid", 5), ("collaborative", 5)])
def test_added_items_score_like_a_fit_that_had_them_learned(full, split, variant, cold_k):
    red, new, had = split
    ref = build_scorer(had, variant=variant, dim=8, cold_k=cold_k).eval()
    small = build_scorer(red, variant=variant, dim=8, cold_k=cold_k).eval()
    state = ref.state_dict()
    with torch.no_grad():                      # the same trained parameters, rows of the old items
        for name, p in small.named_parameters():
            p.copy_(state[name][:red.n_items] if name.startswith("item_") else state[name])
    grown = add_items(small, new).eval()
    u = _users(had)
    torch.testing.assert_close(grown(u), ref(u), atol=1e-5, rtol=1e-5)
    if cold_k:   # the added items borrowed collaborative scores: not all equal to the neutral one
        s = grown.component_scores(u, grown.item_side())["cf"][:, red.n_items:]
        assert s.std() > 0


def test_add_items_leaves_the_given_model_alone(full, split):
    red, new, _ = split
    m = build_memory(red, {"kind": "ease", "lam": 200.0})
    before = m(_users(red)).clone()
    add_items(m, new)
    assert m.config.n_items == red.n_items
    torch.testing.assert_close(m(_users(red)), before)


# --- through the Recommender: text in, tokenised with the stored tokenizer -------------------

def _taste_files(d):
    """Two tastes, 'space' films (even users) and 'cooking' films (odd users)."""
    rng = np.random.default_rng(1)
    items = [(f"s{i}", f"space rocket galaxy {i}", "scifi") for i in range(20)] + \
            [(f"c{i}", f"cooking kitchen chef {i}", "food") for i in range(20)]
    rows = []
    for u in range(24):
        pool = [i for i, _, _ in items if i.startswith("s" if u % 2 == 0 else "c")]
        rows += [(f"u{u}", i) for i in rng.choice(pool, 8, replace=False)]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(os.path.join(d, "train.csv"), index=False)
    pd.DataFrame(rows[:5], columns=["user", "item"]).to_csv(os.path.join(d, "test.csv"), index=False)
    pd.DataFrame(items, columns=["item", "title", "genres"]).to_csv(os.path.join(d, "items.csv"), index=False)
    return prepare_files(train=os.path.join(d, "train.csv"), test=os.path.join(d, "test.csv"),
                         items=os.path.join(d, "items.csv"), valid_ratio=0.0,
                         require_held_out=False)           # built for use: its test pairs are all seen


NEW = pd.DataFrame({"item": ["new_space", "new_cooking"],
                    "title": ["galaxy rocket adventure", "chef kitchen drama"], "genres": ["scifi", "food"]})


@pytest.mark.parametrize("model", [{"kind": "content_knn", "k": 10},
                                   {"kind": "ease", "lam": 10.0, "cold_k": 5}, "content"])
def test_new_item_matching_a_users_taste_ranks_first(tmp_path, model):
    """Known answer: a new 'space' item tops a space fan's list of unseen items, above the new
    'cooking' item, and the other way round; for the learned content model, with token
    embeddings that make the two vocabularies orthogonal."""
    prep = _taste_files(str(tmp_path))
    if model == "content":
        torch.manual_seed(0)
        m = build_scorer(prep, variant="content", dim=2)
        with torch.no_grad():
            space = {"space", "rocket", "galaxy", "genres:scifi", "scifi"}
            cook = {"cooking", "kitchen", "chef", "food"}
            E = torch.zeros(len(prep.tokens), 2)
            for j, t in enumerate(prep.tokens.ids):
                E[j] = torch.tensor([1.0, 0.0]) if t in space else (torch.tensor([0.0, 1.0]) if t in cook else 0.0)
            m.token_emb.weight.copy_(E)
    else:
        m = build_memory(prep, model)
    path = save_export(str(tmp_path / "export"), m, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       csr(prep.train, prep.n_users), torch.from_numpy(prep.bags.idf), prep.item_titles,
                       meta={"text_fields": prep.text_fields})
    rec = Recommender.from_pretrained(path)
    assert rec.add_items(NEW) == 2
    for user, first in (("u0", "new_space"), ("u1", "new_cooking")):
        ids, _ = rec.recommend(user, k=len(rec.items) - 8)
        ids = list(ids)
        other = "new_cooking" if first == "new_space" else "new_space"
        assert ids.index(first) < ids.index(other)
        taste = "s" if first == "new_space" else "c"
        # above every film of the other taste (it may follow films of its own)
        assert all(i.startswith(taste) for i in ids[:ids.index(first)])
    # saving keeps them; a fresh process scores them identically
    rec.save_pretrained(str(tmp_path / "grown"))
    again = Recommender.from_pretrained(str(tmp_path / "grown"))
    assert "new_space" in again.items and len(again.items) == len(rec.items)
    torch.testing.assert_close(again.scores(["u0", "u1"]), rec.scores(["u0", "u1"]))
    code = ("import sys, torch; from recsys import Recommender; r = Recommender.from_pretrained(sys.argv[1]); "
            "torch.save(r.scores(['u0', 'u1']), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "grown"), str(tmp_path / "s.pt")], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "s.pt"), rec.scores(["u0", "u1"]))


def test_add_items_bad_input(tmp_path):
    prep = _taste_files(str(tmp_path))
    m = build_memory(prep, {"kind": "content_knn", "k": 5})
    path = save_export(str(tmp_path / "export"), m, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       csr(prep.train, prep.n_users), torch.from_numpy(prep.bags.idf), prep.item_titles,
                       meta={"text_fields": prep.text_fields})
    rec = Recommender.from_pretrained(path)
    with pytest.raises(ValueError, match=r"already in the catalog"):
        rec.add_items(pd.DataFrame({"item": ["s1"], "title": ["x"], "genres": ["y"]}))
    with pytest.raises(ValueError, match=r"duplicate item ids \['n1'\]"):
        rec.add_items(pd.DataFrame({"item": ["n1", "n1"], "title": ["x", "y"], "genres": ["", ""]}))
    with pytest.raises(KeyError, match=r"no id column 'movieId'"):
        rec.add_items(NEW, item_col="movieId")
    with pytest.raises(KeyError, match=r"text column\(s\) \['plot'\]"):
        rec.add_items(NEW, text_cols=["plot"])
    with pytest.raises(TypeError, match="DataFrame"):
        rec.add_items([("n1", "x")])
    assert len(rec.items) == prep.n_items            # nothing was half-added
