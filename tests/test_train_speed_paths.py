"""The fast training paths: learned_loss.batch_loss reads only the batch's rows and gives the losses
and gradients of the full-catalog computation; sparse=true updates only the batch's rows of
every large table (MixedAdam); the fold-in lambda is chosen on a bounded, seeded user sample."""
from __future__ import annotations

import pytest
import torch

from recsys.models.learned import Scorer
from recsys.models.normalise import standardise
from recsys.train.learned_loss import batch_loss
from recsys.train.losses import LOSSES
from recsys.train.module import MixedAdam, RecsysModule
from recsys.train.tune import choose_fold_in_lambda, sample_users
from tests.helpers import random_scorer


def full_catalog_losses(s: Scorer, users, pos, neg, loss_fn, l2: float = 0.0) -> dict[str, torch.Tensor]:
    """The reference: the training step as it was written before batch_loss, scoring against
    the whole catalog's item_side() (C of every item) and the profile of every user pooled
    from it."""
    c = s.config
    clash = pos[:, None] == neg[None, :]
    side = s.item_side()
    P = s.user_profile(users, side.C) if c.uses_content else None
    pos_s = s.component_scores(users, side, pos[:, None], P)
    neg_s = s.component_scores(users, side, neg, P)
    out = {n: loss_fn(pos_s[n][:, 0], neg_s[n], clash) for n in pos_s}
    if c.variant == "hybrid" and c.learn_alpha:
        z = {}
        for n in pos_s:
            std, mean = torch.std_mean(neg_s[n].detach(), dim=1, keepdim=True, correction=0)
            z[n] = (standardise(pos_s[n].detach(), mean, std), standardise(neg_s[n].detach(), mean, std))
        a = s.alpha
        out["alpha"] = loss_fn((a * z["cf"][0] + (1 - a) * z["content"][0])[:, 0],
                               a * z["cf"][1] + (1 - a) * z["content"][1], clash)
    if l2 > 0 and c.uses_cf:
        out["l2"] = l2 * (s.user_emb(users).pow(2).sum() + s.item_emb(pos).pow(2).sum()) / len(users)
    return out


def _grads(s: Scorer, losses: dict) -> dict[str, torch.Tensor]:
    s.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    return {n: p.grad.to_dense().clone() for n, p in s.named_parameters() if p.grad is not None}


# a batch that repeats users (heavy users appear many times), holds user 2 with no history,
# and negatives that include a row's own positive (masked) and a cold item
USERS = torch.tensor([0, 1, 1, 2, 3, 3, 3, 5, 8])
POS = torch.tensor([4, 0, 7, 1, 2, 2, 9, 11, 3])
NEG = torch.tensor([7, 12, 2, 5, 0, 12])
# a batch of whole histories (model.optim.batching=users): 3 users, 10 rows, so batch_loss
# scores the negatives once per user and hands the rows their user's scores
GROUPED = (torch.tensor([1, 1, 1, 3, 3, 3, 3, 2, 0, 0]), torch.tensor([0, 7, 5, 2, 9, 12, 6, 1, 4, 7]))


@pytest.mark.parametrize("grouped", [False, True], ids=["pairs", "whole-histories"])
@pytest.mark.parametrize("loss", ["softmax", "bpr"])
@pytest.mark.parametrize("variant,cfg", [("collaborative", {}), ("content", {}), ("hybrid", {}),
                                         ("hybrid", {"learn_alpha": True, "alpha": 0.3}),
                                         ("collaborative", {"item_bias": False})])
def test_batch_loss_equals_the_full_catalog_computation(variant, cfg, loss, grouped):
    """Known answer: the batch-only path (C of the needed items only) gives the same losses and
    the same gradients on every parameter as the full-catalog reference, dense or row-sparse,
    for a batch of scattered pairs and for one of whole histories (negatives scored per user)."""
    USERS, POS = GROUPED if grouped else (globals()["USERS"], globals()["POS"])
    s = random_scorer(variant, empty_users=(2,), cold_items=(12,), **cfg).train()
    fn = LOSSES[loss]
    want = full_catalog_losses(s, USERS, POS, NEG, fn, l2=0.1)
    got = batch_loss(s, USERS, POS, NEG, fn, l2=0.1)
    assert set(got) == set(want) and set(got) >= ({"cf"} if s.config.uses_cf else {"content"})
    for n in want:
        torch.testing.assert_close(got[n], want[n])
    g_want = _grads(s, full_catalog_losses(s, USERS, POS, NEG, fn, l2=0.1))
    g_dense = _grads(s, batch_loss(s, USERS, POS, NEG, fn, l2=0.1))
    g_sparse = _grads(s, batch_loss(s, USERS, POS, NEG, fn, l2=0.1, sparse=True))
    assert set(g_dense) == set(g_want) == set(g_sparse)
    for n in g_want:
        torch.testing.assert_close(g_dense[n], g_want[n])
        torch.testing.assert_close(g_sparse[n], g_want[n])


def test_batch_loss_with_a_pretrained_token_table():
    """token_pre_dim > 0: E = token_proj(token_pre); the same losses as the full catalog, and
    the projection keeps a dense gradient with sparse=True (it is not a row table)."""
    base = random_scorer("hybrid")
    from dataclasses import replace
    buffers = {k: v for k, v in base.state_dict().items() if not k.endswith(".weight") and k != "item_bias"}
    buffers["token_pre"] = torch.randn(base.config.n_tokens, 5, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    s = Scorer(replace(base.config, token_pre_dim=5, token_pre_train=True), buffers).train()
    fn = LOSSES["softmax"]
    want = full_catalog_losses(s, USERS, POS, NEG, fn)
    got = batch_loss(s, USERS, POS, NEG, fn, sparse=True)
    for n in want:
        torch.testing.assert_close(got[n], want[n])
    assert s.token_proj.weight not in set(s.sparse_tables())
    g = _grads(s, batch_loss(s, USERS, POS, NEG, fn, sparse=True))
    torch.testing.assert_close(g["token_proj.weight"], _grads(s, full_catalog_losses(s, USERS, POS, NEG, fn))["token_proj.weight"])
    assert not s.token_proj.weight.grad.is_sparse


def test_sparse_step_updates_only_the_batch_rows():
    """model.optim.sparse=true: every large table (users, items, item bias, tokens) gets a
    row-sparse gradient and an update of exactly the rows the batch read: its users; its
    positives and negatives; the tokens of those items and of the batch users' histories.
    Weight decay applies to those rows only."""
    s = random_scorer("hybrid", n_users=30, n_items=40, n_tokens=50, seed=3).train()
    module = RecsysModule(s, {}, loss="softmax", n_neg=5, sparse=True, weight_decay=1e-2)
    module.log = lambda *a, **k: None
    opt = module.configure_optimizers()
    assert isinstance(opt, MixedAdam)
    tables = {"user_emb.weight": s.user_emb.weight, "item_emb.weight": s.item_emb.weight,
              "item_bias": s.item_bias, "token_emb.weight": s.token_emb.weight}
    assert {id(p) for p in s.sparse_tables()} == {id(p) for p in tables.values()}
    before = {n: p.detach().clone() for n, p in tables.items()}
    users, pos = torch.tensor([1, 1, 4, 7]), torch.tensor([2, 5, 5, 9])
    torch.manual_seed(0)
    neg = torch.randint(40, (5,))
    torch.manual_seed(0)
    loss = module.training_step((torch.stack([users, pos], 1),), 0)
    loss.backward()
    for n, p in tables.items():
        assert p.grad.is_sparse, n
    opt.step()
    items = torch.cat([pos, neg])
    hist = torch.cat([s.hist_indices[s.hist_indptr[u]:s.hist_indptr[u + 1]] for u in users.unique()])
    bag_items = torch.cat([items, hist]).unique()
    tokens = torch.cat([s.tok_indices[s.tok_indptr[i]:s.tok_indptr[i + 1]] for i in bag_items]).unique()
    read = {"user_emb.weight": users.unique(), "item_emb.weight": items.unique(), "item_bias": items.unique(),
            "token_emb.weight": tokens}
    for n, p in tables.items():
        moved = (p.detach() != before[n]).reshape(len(p), -1).any(1)
        want = torch.zeros(len(p), dtype=torch.bool)
        want[read[n]] = True
        assert torch.equal(moved, want), n


def test_lazy_adam_equals_adam_when_every_row_is_in_the_batch():
    """Known answer for MixedAdam's weight decay: when a batch reads every row of every table,
    lazy Adam (with wd * w added to the batch rows' gradients) takes Adam's steps (up to
    SparseAdam's placement of eps)."""
    results = []
    for sparse in (False, True):
        s = random_scorer("collaborative", n_users=6, n_items=8, seed=1).train()
        m = RecsysModule(s, {}, loss="softmax", n_neg=8, sparse=sparse, weight_decay=0.05, lr=0.01)
        opt = m.configure_optimizers()
        users, pos = torch.arange(6), torch.tensor([0, 1, 2, 3, 4, 5])
        for _ in range(3):
            opt.zero_grad()
            sum(batch_loss(s, users, pos, torch.arange(8), m.loss_fn, sparse=sparse).values()).backward()
            opt.step()
        results.append({n: p.detach().clone() for n, p in s.named_parameters()})
    for n in results[0]:
        torch.testing.assert_close(results[1][n], results[0][n], atol=1e-6, rtol=1e-5)


def test_sparse_training_needs_no_dense_parameter():
    """A collaborative scorer with all its parameters in tables still gets an optimizer."""
    s = random_scorer("collaborative").train()
    m = RecsysModule(s, {}, sparse=True)
    opt = m.configure_optimizers()
    sum(batch_loss(s, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4]), m.loss_fn, sparse=True).values()).backward()
    opt.step()


def _target(n_users: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (n_users,), generator=g)              # some users without targets
    indptr = torch.zeros(n_users + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(lengths, 0)
    return indptr, torch.randint(0, 50, (int(indptr[-1]),), generator=g)


def test_fold_in_sample_bounds_the_users():
    """At most max_users users keep their targets, each kept row unchanged, the same sample for
    the same seed; a target with few enough users is returned as it is."""
    indptr, indices = _target(2000)
    has = indptr[1:] > indptr[:-1]
    n_with = int(has.sum())
    assert n_with > 300
    sp, si = sample_users((indptr, indices), 300, seed=0)
    kept = sp[1:] > sp[:-1]
    assert int(kept.sum()) == 300 and not bool((kept & ~has).any())
    for u in torch.nonzero(kept).flatten().tolist():
        assert torch.equal(si[sp[u]:sp[u + 1]], indices[indptr[u]:indptr[u + 1]])
    assert torch.equal(sample_users((indptr, indices), 300, seed=0)[1], si)
    assert not torch.equal(sample_users((indptr, indices), 300, seed=1)[0], sp)
    same = sample_users((indptr, indices), n_with, seed=0)
    assert same[0] is indptr and same[1] is indices


def test_choose_fold_in_lambda_ranks_at_most_max_users(monkeypatch):
    import recsys.train.tune as tune
    seen = []

    def fake_evaluate(model, target, *a, **k):
        seen.append(int((target[0][1:] > target[0][:-1]).sum()))
        return {"ndcg@10": model.config.fold_in_lambda / 100}, {}
    monkeypatch.setattr(tune, "evaluate", fake_evaluate)
    s = random_scorer("collaborative", n_users=2000)
    best, curve = choose_fold_in_lambda(s, (s.hist_indptr, s.hist_indices), _target(2000), max_users=100)
    assert seen == [100] * len(tune.FOLD_IN_GRID) and best == max(tune.FOLD_IN_GRID)


def test_sampled_history_profile():
    """max_history: a history no longer than it is pooled whole (the exact losses); a longer
    one contributes exactly max_history draws from its own items; 0 means whole histories."""
    s = random_scorer("content", n_users=9, n_items=13).train()
    fn = LOSSES["softmax"]
    lens = s.hist_indptr[1:] - s.hist_indptr[:-1]
    exact = batch_loss(s, USERS, POS, NEG, fn)
    torch.testing.assert_close(batch_loss(s, USERS, POS, NEG, fn, max_history=int(lens.max()))["content"], exact["content"])
    users = torch.arange(9)
    torch.manual_seed(0)
    pos, take = s._sample_history(users, 2)
    assert torch.equal(take, lens.clamp(max=2))
    row = torch.repeat_interleave(users, take)
    assert bool(((pos >= s.hist_indptr[row]) & (pos < s.hist_indptr[row + 1])).all())
    short = lens[row] <= 2                     # short histories: every item, in order
    want = torch.cat([torch.arange(int(s.hist_indptr[u]), int(s.hist_indptr[u + 1])) for u in users if lens[u] <= 2])
    assert torch.equal(pos[short], want)
    # k = 1: a user's profile is the content vector of one of its own history items
    u = int(torch.argmax(lens))
    C = s.item_content().detach()
    torch.manual_seed(1)
    P, _, _ = s._batch_content(torch.tensor([u]), torch.tensor([0]), torch.tensor([1]), False, max_history=1)
    hist = s.hist_indices[s.hist_indptr[u]:s.hist_indptr[u + 1]]
    assert any(torch.allclose(P[0].detach(), C[i]) for i in hist.tolist())


def test_eval_sets_samples_validation_users_only(tiny_files):
    """val_users: validation ranks a seeded sample of that many users with targets (their rows
    unchanged); the test target and the seen-item masks stay whole; 0 is refused."""
    from recsys.data.prepare import prepare_files
    from recsys.train.build import eval_sets
    prep = prepare_files(**tiny_files, valid_ratio=0.3, seed=0)
    full, part = eval_sets(prep), eval_sets(prep, val_users=5, seed=0)
    n_with = lambda t: int((t[0][1:] > t[0][:-1]).sum())
    assert n_with(full["val_target"]) > 5 and n_with(part["val_target"]) == 5
    for name in ("val_seen", "test_target", "test_seen"):
        assert all(torch.equal(a, b) for a, b in zip(full[name], part[name]))
    fp, fi = full["val_target"]
    pp, pi = part["val_target"]
    for u in torch.nonzero(pp[1:] > pp[:-1]).flatten().tolist():
        assert torch.equal(pi[pp[u]:pp[u + 1]], fi[fp[u]:fp[u + 1]])
    assert torch.equal(eval_sets(prep, val_users=5, seed=0)["val_target"][1], pi)      # seeded
    assert all(torch.equal(a, b) for a, b in zip(eval_sets(prep, val_users=10_000)["val_target"], (fp, fi)))
    with pytest.raises(ValueError, match="val_users=0"):
        eval_sets(prep, val_users=0)


def test_train_run_validates_on_a_user_sample(tmp_path, tiny_files):
    """train.py's val_users reaches validation: with 4 users the best validation value differs
    from the whole validation's, and the test report still ranks every test user."""
    from tests.conftest import compose_train
    import train
    data = [f"data.{k}={v}" for k, v in tiny_files.items()]
    over = ["data=csv", *data, "data.valid_ratio=0.3", "data.refit=false", "model=itemknn", "logger=none"]
    whole = train.run(compose_train([*over, "val_users=null"], str(tmp_path / "a")))
    few = train.run(compose_train([*over, "val_users=4"], str(tmp_path / "b")))
    assert few["test/users"] == whole["test/users"] and few["test/ndcg@10"] == whole["test/ndcg@10"]
    assert few["best/val/ndcg@10"] != whole["best/val/ndcg@10"]


def test_a_finished_fit_keeps_no_optimizer_state(tmp_path, tiny_files, monkeypatch):
    """When the report starts (after a fit and a refit) no optimizer with state is alive:
    Lightning keeps each finished trainer reachable during the run, and with it two moments per
    parameter (at 1M users about 1.1 GB through the report)."""
    import gc
    from tests.conftest import compose_train
    import train
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)}
    seen = []

    def report(*a, **k):
        gc.collect()
        seen.append([o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer) and id(o) not in before
                     and any(len(st) for st in o.state.values())])
        return real(*a, **k)
    real = train.final_report
    monkeypatch.setattr(train, "final_report", report)
    data = [f"data.{k}={v}" for k, v in tiny_files.items()]
    m = train.run(compose_train(["data=csv", *data, "data.valid_ratio=0.3", "logger=none", "trainer.max_epochs=2",
                                 "model.optim.sparse=true"], str(tmp_path)))
    assert "refit/n_train" in m and len(seen) == 1
    assert seen[0] == []
