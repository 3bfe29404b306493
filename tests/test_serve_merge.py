"""rows.merged: the one merge of scoring calls (the service's batches, the scoring process's queue)."""
from __future__ import annotations

from recsys.serve.rows import merged


def _scorer(log):
    def score(queries, exclude, histories):
        log.append((list(queries), exclude, dict(histories or {})))
        if "bad" in queries:
            raise KeyError("bad")
        return [f"{q}:{len(exclude[n]) if exclude else 0}:{n in (histories or {})}" for n, q in enumerate(queries)]
    return score


def test_calls_are_scored_once_and_split_back_with_their_excludes_and_histories():
    log = []
    out = merged(_scorer(log), [(["a", "b"], None, None), (["c"], [["x", "y"]], {0: [5]})])
    assert out == [["a:0:False", "b:0:False"], ["c:2:True"]]
    assert log == [(["a", "b", "c"], [[], [], ["x", "y"]], {2: [5]})]          # one call, positions shifted


def test_a_failing_merged_call_is_retried_one_by_one_and_only_the_bad_call_fails():
    log = []
    out = merged(_scorer(log), [(["a"], None, None), (["bad"], None, None), (["c"], None, None)])
    assert out[0] == ["a:0:False"] and out[2] == ["c:0:False"]
    assert isinstance(out[1], KeyError)
    assert [q for q, _, _ in log] == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_a_single_call_is_not_merged_and_its_error_comes_back():
    log = []
    out = merged(_scorer(log), [(["bad"], None, None)])
    assert isinstance(out[0], KeyError) and len(log) == 1
