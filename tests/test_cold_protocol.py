"""The cold-item protocol on the embedded MovieLens: held-out items never leak into training
(no train or valid interaction, no user tag), and they are scored through their content."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from recsys.data.prepare import prepare_movielens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = {"kind": "colditems", "cold": 0.1, "valid": 0.1, "test": 0.1, "seed": 7}


@pytest.fixture(scope="module")
def preps():
    path = os.path.join(ROOT, "data", "ml-latest-small")
    tokens = {"prefix_fields": ["genres"], "min_count": 1}    # every token kept: bags compare exactly
    return (prepare_movielens(path, split=SPLIT, tokens=tokens),
            prepare_movielens(path, split=SPLIT, use_tags=False, tokens=tokens))


def _token_sets(prep):
    b = prep.bags
    return [set(prep.tokens.ids[j] for j in b.indices[b.indptr[i]:b.indptr[i + 1]]) for i in range(prep.n_items)]


def test_cold_items_have_no_training_or_validation_interaction_and_no_tags(preps):
    prep, untagged = preps
    test_items = set(prep.test[:, 1].tolist())
    seen = set(prep.train[:, 1].tolist()) | set(prep.valid[:, 1].tolist())
    cold = test_items - seen
    # about 10% of the ~9.7k rated movies are held out (plus movies whose only ratings fell in test)
    assert 900 < len(cold) < 1500
    assert prep.report["tags_dropped_cold_items"] > 0
    with_tags, without = _token_sets(prep), _token_sets(untagged)
    # same split on both: a held-out movie has exactly the tokens of the run without tags,
    # while many warm movies have tag tokens
    assert all(with_tags[i] == without[i] for i in cold)
    warm = sorted(seen)[:2000]
    assert sum(bool(with_tags[i] - without[i]) for i in warm) > 100


def test_content_scores_reach_cold_items(preps):
    """A content model ranks held-out movies (they are not all at the bottom)."""
    from recsys.train.build import build_memory, eval_sets, report_context
    from recsys.eval.evaluation import evaluate
    prep, _ = preps
    model = build_memory(prep, {"kind": "content_knn", "k": 50})
    sets = eval_sets(prep)
    rep, _ = evaluate(model, sets["test_target"], sets["test_seen"], [20], 1024, "test/",
                      context={k: v for k, v in report_context(prep).items() if k == "item_cold"})
    assert rep["test/cold_items/users"] > 100
    assert rep["test/cold_items/recall@20"] > 0.0
