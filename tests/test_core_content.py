"""Known answers for the content side: token vocabulary, TF-IDF bags, pooled item content
vectors and user content profiles."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.data.content import tfidf_bags
from recsys.models.learned import Scorer, ScorerConfig
from recsys.sparse.csr import csr_from_pairs
from recsys.data.vocab import Vocab

# Toy corpus, N = 3 items:
#   item 0: apple red apple     item 1: apple green     item 2: banana
# Vocabulary (by count, ties alphabetical): [UNK]=0, apple=1, banana=2, green=3, red=4
# df: apple 2, banana 1, green 1, red 1, [UNK] 0
# idf = ln((1 + N) / (1 + df)) + 1:
IDF_APPLE = 1.2876820724517808     # ln(4/3) + 1
IDF_ONCE = 1.6931471805599454      # ln(4/2) + 1   (banana, green, red)
IDF_UNUSED = 2.386294361119891     # ln(4/1) + 1   ([UNK], df = 0)
# item 0: tf*idf = (2 * 1.28768, 1 * 1.69315), L2-normalised:
W0_APPLE, W0_RED = 0.8355915419449176, 0.5493512310263033
# item 1: (1.28768, 1.69315), L2-normalised:
W1_APPLE, W1_GREEN = 0.6053485081062916, 0.7959605415681652
# item 2: a single token has weight 1.
DOCS = [["apple", "red", "apple"], ["apple", "green"], ["banana"]]


def bag(bags, i):
    """{token index: weight} of item i."""
    lo, hi = bags.indptr[i], bags.indptr[i + 1]
    return dict(zip(bags.indices[lo:hi].tolist(), bags.weights[lo:hi].tolist()))


def test_token_vocab_of_toy_corpus():
    """The toy corpus vocabulary is [UNK] first, then by count with alphabetical ties."""
    assert Vocab.build_tokens(DOCS).ids == ["[UNK]", "apple", "banana", "green", "red"]


def test_tfidf_idf_matches_hand_computation():
    """idf = ln((1+N)/(1+df)) + 1 for every token, including the unused [UNK]."""
    bags = tfidf_bags(DOCS, Vocab.build_tokens(DOCS))
    np.testing.assert_allclose(bags.idf, [IDF_UNUSED, IDF_APPLE, IDF_ONCE, IDF_ONCE, IDF_ONCE], rtol=1e-6)
    assert bags.idf.dtype == np.float32


def test_tfidf_weights_match_hand_computation():
    """Each item's weights are tf*idf L2-normalised, stored in CSR order of the items."""
    bags = tfidf_bags(DOCS, Vocab.build_tokens(DOCS))
    assert bags.n_items == 3
    assert bags.indptr.tolist() == [0, 2, 4, 5]
    b0, b1, b2 = bag(bags, 0), bag(bags, 1), bag(bags, 2)
    assert b0 == pytest.approx({1: W0_APPLE, 4: W0_RED}, rel=1e-6)
    assert b1 == pytest.approx({1: W1_APPLE, 3: W1_GREEN}, rel=1e-6)
    assert b2 == pytest.approx({2: 1.0}, rel=1e-6)
    for i in range(3):
        assert sum(w * w for w in bag(bags, i).values()) == pytest.approx(1.0, rel=1e-6)


def test_tfidf_reuses_a_given_idf():
    """With idf given, the weights use it instead of refitting on the docs."""
    vocab = Vocab.build_tokens(DOCS)
    idf = np.array([1.0, 1.0, 1.0, 3.0, 4.0], dtype=np.float32)
    bags = tfidf_bags([["green", "red"]], vocab, idf=idf)
    assert bag(bags, 0) == pytest.approx({3: 0.6, 4: 0.8}, rel=1e-6)   # (3, 4) / 5
    np.testing.assert_array_equal(bags.idf, idf)


def test_unknown_tokens_map_to_unk_and_empty_items_get_empty_bags():
    """Out-of-vocabulary tokens count as [UNK] (index 0); an item without tokens has no entries."""
    vocab = Vocab(["[UNK]", "apple"], unk="[UNK]")
    docs = [["apple", "zzz", "qqq"], [], ["apple"], []]
    bags = tfidf_bags(docs, vocab)
    # N = 4; df(apple) = 2, df([UNK]) = 1: idf = ln(5/3)+1 and ln(5/2)+1
    np.testing.assert_allclose(bags.idf, [1.916290731874155, 1.5108256237659907], rtol=1e-6)
    # item 0: apple tf 1 (1.51083), [UNK] tf 2 (2 * 1.91629), L2-normalised
    assert bag(bags, 0) == pytest.approx({0: 0.9303238670444788, 1: 0.3667390112974172}, rel=1e-6)
    assert bag(bags, 1) == {}
    assert bag(bags, 2) == pytest.approx({1: 1.0})
    assert bag(bags, 3) == {}
    assert bags.indptr.tolist() == [0, 2, 2, 3, 3]


def test_unknown_tokens_dropped_with_unknown_drop():
    """unknown='drop' drops out-of-vocabulary tokens; an item with only those gets an empty bag."""
    vocab = Vocab(["[UNK]", "apple"], unk="[UNK]")
    bags = tfidf_bags([["apple", "zzz"], ["zzz"], ["apple"]], vocab, unknown="drop")
    assert bag(bags, 0) == pytest.approx({1: 1.0})
    assert bag(bags, 1) == {}
    assert bag(bags, 2) == pytest.approx({1: 1.0})


# --- pooling in the scorer --------------------------------------------------------------------


def content_scorer(bags, histories: list[list[int]], dim: int = 4) -> Scorer:
    users = [u for u, h in enumerate(histories) for _ in h]
    items = [i for h in histories for i in h]
    hist_indptr, hist_indices, _ = csr_from_pairs(np.array(users), np.array(items), len(histories))
    cfg = ScorerConfig(n_users=len(histories), n_items=bags.n_items, n_tokens=len(bags.idf),
                       variant="content", dim=dim)
    torch.manual_seed(0)
    return Scorer(cfg, {
        "tok_indptr": torch.from_numpy(bags.indptr), "tok_indices": torch.from_numpy(bags.indices),
        "tok_weights": torch.from_numpy(bags.weights),
        "hist_indptr": torch.from_numpy(hist_indptr), "hist_indices": torch.from_numpy(hist_indices),
        "item_warm": torch.ones(bags.n_items, dtype=torch.bool)})


def test_item_content_is_weighted_sum_of_token_embeddings():
    """C[i] = sum_t w(i,t) E[t] with the hand-computed weights; an empty item (also the last
    one, whose offset equals the number of entries) gets a zero vector."""
    docs = [*DOCS, [], ["red"], []]   # N = 6 now: refit, so only use the bags' own weights below
    vocab = Vocab.build_tokens(DOCS)
    bags3 = tfidf_bags(DOCS, vocab)
    s3 = content_scorer(bags3, [[0]])
    E = s3.token_emb.weight.detach().double()
    C = s3.item_content().detach().double()
    torch.testing.assert_close(C[0], W0_APPLE * E[1] + W0_RED * E[4], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(C[1], W1_APPLE * E[1] + W1_GREEN * E[3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(C[2], E[2], rtol=1e-5, atol=1e-6)

    s6 = content_scorer(tfidf_bags(docs, vocab), [[0]])
    C6 = s6.item_content().detach()
    E6 = s6.token_emb.weight.detach()
    assert C6.shape == (6, 4)
    assert torch.equal(C6[3], torch.zeros(4)) and torch.equal(C6[5], torch.zeros(4))
    torch.testing.assert_close(C6[4], E6[4])          # a single token: weight 1


def test_user_profile_is_mean_of_history_content():
    """P[u] = mean of C over u's history items; a user with no history gets zeros."""
    bags = tfidf_bags(DOCS, Vocab.build_tokens(DOCS))
    s = content_scorer(bags, [[0, 1], [2], [], [2, 0, 1]])
    C = s.item_content().detach()
    P = s.user_profile(torch.tensor([0, 1, 2, 3, 0]), C).detach()
    torch.testing.assert_close(P[0], (C[0] + C[1]) / 2)
    torch.testing.assert_close(P[1], C[2])
    assert torch.equal(P[2], torch.zeros(4))
    torch.testing.assert_close(P[3], (C[0] + C[1] + C[2]) / 3)
    torch.testing.assert_close(P[4], P[0])
    # and the content score is P[u] . C[i]
    scores = s(torch.tensor([0, 2])).detach()
    torch.testing.assert_close(scores[0], C @ P[0])
    assert torch.equal(scores[1], torch.zeros(3))


# --- vocabularies -----------------------------------------------------------------------------

VOCAB_DOCS = [["b", "a", "c", "a"], ["c", "a", "d"], ["e"]]   # a 3, c 2, b/d/e 1


def test_build_tokens_order_min_count_and_max_size():
    """Most frequent first, alphabetical ties, min_count filters, max_size counts [UNK]."""
    assert Vocab.build_tokens(VOCAB_DOCS).ids == ["[UNK]", "a", "c", "b", "d", "e"]
    assert Vocab.build_tokens(VOCAB_DOCS, min_count=2).ids == ["[UNK]", "a", "c"]
    assert Vocab.build_tokens(VOCAB_DOCS, min_count=4).ids == ["[UNK]"]
    assert Vocab.build_tokens(VOCAB_DOCS, max_size=4).ids == ["[UNK]", "a", "c", "b"]
    assert Vocab.build_tokens(VOCAB_DOCS, max_size=1).ids == ["[UNK]"]
    with pytest.raises(ValueError):
        Vocab.build_tokens(VOCAB_DOCS, max_size=0)


def test_build_tokens_is_deterministic_and_keeps_one_unk():
    """Document order does not change the vocabulary; a literal [UNK] in the text is not
    added twice and the unknown token sits at index 0."""
    v1 = Vocab.build_tokens(VOCAB_DOCS)
    v2 = Vocab.build_tokens(list(reversed([list(reversed(d)) for d in VOCAB_DOCS])))
    assert v1.ids == v2.ids
    v3 = Vocab.build_tokens([["[UNK]", "x", "[UNK]", "[UNK]"]])
    assert v3.ids == ["[UNK]", "x"] and v3.unk == "[UNK]"
    assert v3.index(["nope", "x"], missing="unk").tolist() == [0, 1]


def test_vocab_index_missing_modes():
    """missing='raise' raises KeyError, 'drop_flag' gives -1, 'unk' needs an unknown token."""
    v = Vocab(["b", "a"])
    assert v.index(["a", "b"]).tolist() == [1, 0]
    assert v.index(["a", "zz"], missing="drop_flag").tolist() == [1, -1]
    with pytest.raises(KeyError):
        v.index(["a", "zz"])
    with pytest.raises(ValueError):
        v.index(["a"], missing="unk")
    with pytest.raises(ValueError):
        Vocab(["a", "a"])


@pytest.mark.parametrize("ids", [[10, 3, 7], ["10", "3", "7"], ["u1", "u2"]])
def test_vocab_json_round_trip_keeps_id_types(ids):
    """Vocab -> JSON text -> Vocab keeps each id's type, so 3 and "3" stay distinct."""
    v = Vocab(ids)
    back = Vocab.from_json(json.loads(json.dumps(v.to_json())))
    assert back.ids == ids
    assert [type(i) for i in back.ids] == [type(i) for i in ids]
    assert back.index(ids).tolist() == list(range(len(ids)))
    if isinstance(ids[0], int):
        assert "3" not in back and 3 in back
    elif ids[0] == "10":
        assert 3 not in back and "3" in back


def test_vocab_numpy_ids_become_python_scalars():
    """numpy integer ids are stored as Python ints (JSON-serialisable, looked up by int)."""
    v = Vocab(np.array([5, 9], dtype=np.int64))
    assert [type(i) for i in v.ids] == [int, int]
    assert v.get(np.int64(9)) == 1 and v.get(9) == 1
    back = Vocab.from_json(json.loads(json.dumps(v.to_json())))
    assert back.ids == [5, 9]
    tok = Vocab.build_tokens([["a"]])
    assert Vocab.from_json(json.loads(json.dumps(tok.to_json()))).unk == "[UNK]"
