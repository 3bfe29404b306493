"""The Scorer and full ranking on tiny random scorers: formulas, chunking, batching, masking,
the hybrid blend, cold items and argument checks."""
from __future__ import annotations

import copy

import pytest
import torch

from recsys.eval.ranking import rank, mask_seen, topk
from recsys.models.learned import BUFFERS, Scorer, ScorerConfig
from recsys.models.normalise import standardise

from helpers import random_scorer

VARIANTS = ("collaborative", "content", "hybrid")
ALL = torch.arange(9)


def hist(scorer, u: int) -> list[int]:
    return scorer.hist_indices[scorer.hist_indptr[u]:scorer.hist_indptr[u + 1]].tolist()


def by_hand(scorer) -> dict[str, torch.Tensor]:
    """Raw (users x items) component scores straight from the parameters, with Python loops."""
    out = {}
    I = scorer.config.n_items
    with torch.no_grad():
        if scorer.config.uses_cf:
            U, V, b = scorer.user_emb.weight, scorer.item_emb.weight, scorer.item_bias
            out["cf"] = torch.stack([torch.stack([U[u] @ V[i] + b[i] for i in range(I)])
                                     for u in range(scorer.config.n_users)])
        if scorer.config.uses_content:
            E = scorer.token_emb.weight
            C = torch.zeros(I, E.shape[1])
            for i in range(I):
                for p in range(scorer.tok_indptr[i], scorer.tok_indptr[i + 1]):
                    C[i] += scorer.tok_weights[p] * E[scorer.tok_indices[p]]
            P = torch.stack([C[hist(scorer, u)].mean(0) if hist(scorer, u) else torch.zeros(E.shape[1])
                             for u in range(scorer.config.n_users)])
            out["content"] = P @ C.T
    return out


def zscore(s: torch.Tensor) -> torch.Tensor:
    return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_match_formulas(variant):
    """forward() equals U.V + b, P.C, or alpha*z(cf) + (1-alpha)*z(content) built by hand."""
    s = random_scorer(variant, alpha=0.3, empty_users={4})
    got = s(ALL).detach()
    ref = by_hand(s)
    want = {"collaborative": lambda: ref["cf"], "content": lambda: ref["content"],
            "hybrid": lambda: 0.3 * zscore(ref["cf"]) + 0.7 * zscore(ref["content"])}[variant]()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got.shape == (9, 13)


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_ranking_equals_unchunked(variant):
    """topk with chunk_size 1, 3 and 1000 gives the same items and scores, with and without
    the seen mask."""
    s = random_scorer(variant, seed=1)
    for seen in (None, (s.hist_indptr, s.hist_indices)):
        ref_items, ref_scores = topk(s, ALL, 5, seen, chunk_size=1000)
        for chunk in (1, 3):
            items, scores = topk(s, ALL, 5, seen, chunk_size=chunk)
            assert torch.equal(items, ref_items), chunk
            torch.testing.assert_close(scores, ref_scores, rtol=1e-6, atol=1e-6)
        chunks = list(rank(s, ALL, 5, seen, chunk_size=4))
        assert [c[0].tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_equals_single_user(variant):
    """Each user scored alone equals its row of the batch; user order does not matter."""
    s = random_scorer(variant, seed=2)
    batch = s(ALL).detach()
    for u in range(9):
        torch.testing.assert_close(s(torch.tensor([u])).detach()[0], batch[u], rtol=1e-6, atol=1e-6)
    perm = torch.tensor([8, 3, 3, 0, 5])
    torch.testing.assert_close(s(perm).detach(), batch[perm], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_seen_items_never_in_topk(variant):
    """With the seen mask no history item is returned; the top-k is the best unseen items."""
    s = random_scorer(variant, seed=3)
    full = s(ALL).detach()
    items, scores = topk(s, ALL, 8, (s.hist_indptr, s.hist_indices))
    for u in range(9):
        h = set(hist(s, u))
        assert not h & set(items[u].tolist())
        unseen = [i for i in range(13) if i not in h]
        best = sorted(unseen, key=lambda i: -full[u, i].item())[:8]
        assert items[u].tolist() == best
        torch.testing.assert_close(scores[u], full[u, best], rtol=1e-6, atol=1e-6)


def test_mask_seen_sets_exactly_the_seen_entries():
    """mask_seen writes -inf at (user, seen item) and nowhere else, in place."""
    s = random_scorer("collaborative", seed=4, empty_users={2})
    users = torch.tensor([2, 0, 5])
    scores = torch.zeros(3, 13)
    out = mask_seen(scores, users, s.hist_indptr, s.hist_indices)
    assert out is scores
    for row, u in enumerate(users.tolist()):
        want = [float("-inf") if i in hist(s, u) else 0.0 for i in range(13)]
        assert scores[row].tolist() == want


def same_params(hybrid, variant) -> Scorer:
    """A collaborative or content scorer sharing the hybrid scorer's buffers and parameters."""
    single = Scorer(ScorerConfig(**{**hybrid.config.to_json(), "variant": variant}),
                    {b: getattr(hybrid, b) for b in BUFFERS})
    state = {k: v for k, v in hybrid.state_dict().items() if k in single.state_dict()}
    single.load_state_dict(state, strict=True)
    return single.eval()


@pytest.mark.parametrize("alpha, variant", [(1.0, "collaborative"), (0.0, "content")])
def test_hybrid_extreme_alpha_ranks_like_single_component(alpha, variant):
    """Hybrid with alpha=1 ranks exactly like collaborative, alpha=0 exactly like content
    (same parameters), cold items and empty histories included."""
    h = random_scorer("hybrid", n_users=9, n_items=13, seed=5, alpha=alpha, cold_items={2, 7})
    single = same_params(h, variant)
    seen = (h.hist_indptr, h.hist_indices)
    for s in (None, seen):
        hi, _ = topk(h, ALL, 13 - 4, s)
        si, _ = topk(single, ALL, 13 - 4, s)
        assert torch.equal(hi, si)
    # and the blended scores are exactly the standardised single-component scores
    torch.testing.assert_close(h(ALL).detach(), standardise(single(ALL).detach()), rtol=1e-5, atol=1e-5)


def test_standardise_rows_have_zero_mean_unit_std():
    """standardise: every row has mean ~0 and (unbiased) std ~1; given stats are used as is."""
    torch.manual_seed(0)
    s = torch.randn(6, 50) * torch.rand(6, 1) * 10 + torch.randn(6, 1) * 100
    z = standardise(s)
    torch.testing.assert_close(z.mean(1), torch.zeros(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(1), torch.ones(6), rtol=0, atol=1e-4)
    mean, std = torch.full((6, 1), 2.0), torch.full((6, 1), 4.0)
    torch.testing.assert_close(standardise(s, mean, std), (s - 2.0) / (4.0 + 1e-8))
    # a constant row (e.g. zero content profile) standardises to zeros, not NaN
    assert torch.equal(standardise(torch.full((1, 5), 3.0)), torch.zeros(1, 5))


def test_hybrid_components_are_standardised_per_user():
    """Hybrid scores of every user have mean ~0 over the catalog (both parts are z-scores)."""
    s = random_scorer("hybrid", seed=6, alpha=0.4)
    z = s(ALL).detach()
    torch.testing.assert_close(z.mean(1), torch.zeros(9), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ("collaborative", "hybrid"))
def test_cold_items_get_users_mean_warm_cf_score(variant):
    """A cold item's collaborative score is the user's mean U.V+b over warm items."""
    cold = {1, 6, 12}
    s = random_scorer(variant, seed=7, cold_items=cold)
    raw = by_hand(s)["cf"]
    warm = [i for i in range(13) if i not in cold]
    tables = s.item_side()
    cf = s.neutralise_cold(s.component_scores(ALL, tables)["cf"]).detach()
    for u in range(9):
        m = raw[u, warm].mean()
        for i in range(13):
            want = m if i in cold else raw[u, i]
            assert cf[u, i].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)
    if variant == "collaborative":
        torch.testing.assert_close(s(ALL).detach(), cf)
    else:   # cold items have z = 0 in the cf part, so they rank by content alone
        zcf = standardise(cf)
        torch.testing.assert_close(zcf[:, sorted(cold)], torch.zeros(9, 3), rtol=0, atol=1e-6)


def test_all_warm_leaves_cf_scores_untouched():
    """With every item warm, neutralise_cold is the identity."""
    s = random_scorer("collaborative", seed=8)
    x = torch.randn(3, 13)
    assert torch.equal(s.neutralise_cold(x), x)


def test_component_scores_for_item_subsets():
    """component_scores with shared items (N,) or per-user items (B, N) pick the matching
    columns of the full (B, I) scores."""
    s = random_scorer("hybrid", seed=9)
    t = s.item_side()
    users = torch.tensor([0, 4, 7])
    full = s.component_scores(users, t)
    shared = torch.tensor([3, 0, 12])
    per_user = torch.tensor([[1, 2], [5, 5], [12, 0]])
    for name in ("cf", "content"):
        torch.testing.assert_close(s.component_scores(users, t, shared)[name], full[name][:, shared])
        torch.testing.assert_close(s.component_scores(users, t, per_user)[name],
                                   full[name].gather(1, per_user))


@pytest.mark.parametrize("k", [0, -1, 14])
def test_k_out_of_range_raises(k):
    """k must be in 1..n_items."""
    s = random_scorer("collaborative")
    with pytest.raises(ValueError):
        topk(s, ALL, k)
    with pytest.raises(ValueError):
        next(rank(s, ALL, 3, chunk_size=0))


def test_topk_of_no_users_is_empty():
    """No users -> (0, k) results."""
    items, scores = topk(random_scorer("content"), torch.zeros(0, dtype=torch.long), 4)
    assert items.shape == (0, 4) and scores.shape == (0, 4)


@pytest.mark.parametrize("bad", [dict(alpha=-0.01), dict(alpha=1.01), dict(variant="hybridd"),
                                 dict(variant="CF"), dict(dim=0)])
def test_config_rejects_bad_values(bad):
    """ScorerConfig rejects alpha outside [0, 1], unknown variants and dim < 1."""
    with pytest.raises(ValueError):
        ScorerConfig(n_users=2, n_items=3, n_tokens=4, **bad)


def test_scorer_rejects_missing_or_mis_sized_buffers():
    """Missing buffers or buffers that do not match the config's sizes raise ValueError."""
    s = random_scorer("hybrid")
    buffers = {b: getattr(s, b) for b in BUFFERS}
    cfg = copy.deepcopy(s.config)
    with pytest.raises(ValueError):
        Scorer(cfg, {k: v for k, v in buffers.items() if k != "item_warm"})
    cfg.n_users += 1
    with pytest.raises(ValueError):
        Scorer(cfg, buffers)


def test_alpha_property():
    """alpha is 1 for collaborative, 0 for content, config.alpha for a fixed hybrid, and
    starts at config.alpha when learned."""
    assert float(random_scorer("collaborative").alpha) == 1.0
    assert float(random_scorer("content").alpha) == 0.0
    assert float(random_scorer("hybrid", alpha=0.25).alpha) == 0.25
    learned = Scorer(ScorerConfig(n_users=9, n_items=13, n_tokens=10, dim=6, alpha=0.25, learn_alpha=True),
                     {b: getattr(random_scorer("hybrid"), b) for b in BUFFERS})
    assert float(learned.alpha.detach()) == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("variant", ["collaborative", "content", "hybrid"])
def test_in_place_scoring_is_bitwise_the_plain_expression(variant):
    """score_users(out=...) under no_grad (the ranking path) equals the plain expression
    exactly (the hybrid, computed in one matmul from per-user statistics, to float rounding),
    cold items included, and reusing the out/scratch blocks changes nothing."""
    from recsys.train.build import build_scorer
    from recsys.data.prepare import prepare_files
    import tempfile
    from tests.conftest import write_tiny_dataset
    with tempfile.TemporaryDirectory() as d:
        f = write_tiny_dataset(d)
        prep = prepare_files(train=f["train"], test=f["test"], items=f["items"])
    assert not prep.item_warm().all()                        # cold items are exercised
    torch.manual_seed(0)
    s = build_scorer(prep, variant=variant, dim=8)
    with torch.no_grad():
        for p in s.parameters():
            p.normal_()
        users = torch.arange(prep.n_users)
        tables = s.item_side()
        plain = s._combine(s.component_scores(users, tables))
        out = torch.full((prep.n_users, prep.n_items), 7.0)
        for _ in range(2):
            got = s.score_users(users, tables, out=out)
            if variant == "hybrid":
                torch.testing.assert_close(got, plain, atol=2e-5, rtol=1e-5)
            else:
                assert torch.equal(got, plain)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hybrid_history_scores_in_one_matmul_equal_the_plain_expression(mode):
    """score_histories of the hybrid under no_grad (new users at ranking time) goes through the
    known users' one-matmul rows with the folded-in vectors; it equals the plain blend of
    standardised fold-in and profile scores, cold items included, with and without `out`."""
    from recsys.train.build import build_scorer
    from recsys.data.prepare import prepare_files
    import tempfile
    from tests.conftest import write_tiny_dataset
    with tempfile.TemporaryDirectory() as d:
        f = write_tiny_dataset(d)
        prep = prepare_files(train=f["train"], test=f["test"], items=f["items"])
    assert not prep.item_warm().all()
    torch.manual_seed(0)
    s = build_scorer(prep, variant="hybrid", dim=8)
    s.train(mode == "train")
    g = torch.Generator().manual_seed(1)
    H = (torch.rand(6, prep.n_items, generator=g) < 0.2).float()
    H[2] = 0                                                    # an empty history
    H = H.to_sparse_csr()
    with torch.no_grad():
        for p in s.parameters():
            p.normal_()
        side = s.item_side()
        u = s.fold_in(H, side.V, s.config.fold_in_lambda)
        P = s.profile_from_items(H.crow_indices(), H.col_indices(), torch.arange(6), side.C)
        plain = s._combine({"cf": u @ side.V.T + side.b, "content": P @ side.C.T})
        torch.testing.assert_close(s.score_histories(H, side), plain, atol=2e-5, rtol=1e-5)
        out = torch.full((6, prep.n_items), 7.0)
        got = s.score_histories(H, side, out=out)
        assert got.data_ptr() == out.data_ptr()
        torch.testing.assert_close(got, plain, atol=2e-5, rtol=1e-5)
