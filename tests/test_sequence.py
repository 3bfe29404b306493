"""The sequence model (recsys/models/sequence.py, train/sequence_module.py): windows, time order
from the data layer, causality, order that changes the answer, a known next-item answer that no
bag model can give, items never trained on, export round trip, live events in the service."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import recsys
from helpers import same_ranking
from recsys.models.sequence import Sequence, SequenceConfig, mix_cold, windows

N_ITEMS = 12


def _cycle_data(n_users: int = 60, length: int = 9, seed: int = 0):
    """Each user walks the cycle 0 -> 1 -> ... -> 11 -> 0 from a random start: the next item is
    always the current one + 1. Items 12 and 13 exist in the item table only (never trained)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        s = int(rng.integers(N_ITEMS))
        rows += [(f"u{u}", (s + t) % N_ITEMS, 1000 + t) for t in range(length)]
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    items = pd.DataFrame({"item": range(N_ITEMS + 2),
                          "title": [f"film {i} {'odd' if i % 2 else 'even'}" for i in range(N_ITEMS + 2)]})
    return inter, items


@pytest.fixture(scope="module")
def cyc():
    inter, items = _cycle_data()
    torch.manual_seed(0)
    return recsys.fit(inter, items, model="sequence", time_col="timestamp", max_epochs=40, dim=32, blocks=1,
                      max_len=8, dropout=0.0, optim={"lr": 0.01, "batch_size": 16})


def test_windows_are_the_newest_items_right_padded():
    indptr = torch.tensor([0, 3, 3, 8])
    indices = torch.tensor([5, 6, 7, 1, 2, 3, 4, 9])
    seqs, n = windows(indptr, indices, torch.tensor([0, 1, 2]), 4)
    assert seqs.tolist() == [[5, 6, 7, -1], [-1, -1, -1, -1], [2, 3, 4, 9]] and n.tolist() == [3, 0, 4]
    seqs, n = windows(indptr, indices, torch.tensor([1]), 4)
    assert seqs.tolist() == [[-1]] and n.tolist() == [0]


def test_prepared_sequences_are_in_time_order_ties_in_file_order():
    from recsys.data.prepare import prepare_frames
    df = pd.DataFrame({"user": [1, 1, 1, 1, 2, 2], "item": [10, 20, 30, 40, 10, 20],
                       "timestamp": [5, 1, 5, 3, 9, 2]})
    prep = prepare_frames(df, time_col="timestamp")
    indptr, indices = prep.sequences()
    ids = prep.items.ids
    seq = [[ids[j] for j in indices[indptr[u]:indptr[u + 1]].tolist()] for u in range(2)]
    assert seq == [[20, 40, 10, 30], [20, 10]]           # times 1, 3, 5 (10 read before 30), 5


def test_valid_split_last_holds_out_each_users_newest_event(tmp_path):
    from recsys.data.prepare import prepare_files
    p = tmp_path / "train.csv"
    pd.DataFrame({"user": [1, 1, 1, 2, 3, 3, 4, 4], "item": [1, 2, 3, 1, 2, 3, 3, 1],
                  "timestamp": [3, 1, 3, 7, 1, 2, 1, 2]}).to_csv(p, index=False)
    t = tmp_path / "test.csv"
    pd.DataFrame({"user": [1, 3], "item": [4, 1], "timestamp": [9, 9]}).to_csv(t, index=False)
    prep = prepare_files(train=str(p), test=str(t), valid_split="last")
    got = sorted((prep.users.ids[u], prep.items.ids[i]) for u, i in prep.valid)
    assert got == [(1, 3), (3, 3), (4, 1)]               # user 2 has one event: kept in train
    with pytest.raises(ValueError, match="data.valid_split='newest' is not one of"):
        prepare_files(train=str(p), test=str(t), valid_split="newest")


def _random_model(seed: int = 0, **kw) -> Sequence:
    torch.manual_seed(seed)
    kw.setdefault("cold_k", 0)
    cfg = SequenceConfig(n_users=3, n_items=7, n_tokens=5, dim=8, blocks=2, heads=2, max_len=6, dropout=0.0, **kw)
    bufs = {"tok_indptr": torch.tensor([0, 1, 2, 3, 4, 5, 5, 7]), "tok_indices": torch.tensor([0, 1, 2, 3, 4, 0, 1]),
            "tok_weights": torch.rand(7), "seq_indptr": torch.tensor([0, 3, 3, 5]),
            "seq_indices": torch.tensor([4, 1, 2, 0, 3]), "hist_indptr": torch.tensor([0, 3, 3, 5]),
            "hist_indices": torch.tensor([1, 2, 4, 0, 3]),
            "item_warm": torch.tensor([True, True, True, True, True, False, False]),
            "fill_indptr": torch.tensor([0, 0, 0, 0, 0, 0, 0, 2]), "fill_indices": torch.tensor([0, 3]),
            "fill_weights": torch.tensor([0.75, 0.5])}       # item 6 borrows 0.75 V[0] + 0.5 V[3]
    if not cfg.cold_k:
        bufs.update(fill_indptr=torch.zeros(8, dtype=torch.long), fill_indices=torch.zeros(0, dtype=torch.long),
                    fill_weights=torch.zeros(0))
    m = Sequence(cfg, bufs)
    with torch.no_grad():                               # larger weights: differences are visible
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m.eval()


def test_attention_is_causal_and_padding_is_never_read():
    m = _random_model()
    a = m.encode(torch.tensor([[1, 2, 3, 4, 5]]))
    b = m.encode(torch.tensor([[1, 2, 6, 0, 0]]))
    torch.testing.assert_close(a[:, :2], b[:, :2])       # positions 0, 1 never see 2 onward
    assert not torch.allclose(a[:, 2], b[:, 2])
    c = m.encode(torch.tensor([[1, 2, -1, -1, -1]]))
    torch.testing.assert_close(a[:, :2], c[:, :2])       # padding after them changes nothing


def test_order_changes_the_scores_and_known_users_read_their_sequence():
    m = _random_model()
    side = m.item_side()
    def H(seq):
        return torch.sparse_csr_tensor(torch.tensor([0, len(seq)]), torch.tensor(seq), torch.ones(len(seq)), (1, 7))
    s1 = m.score(H([4, 1, 2]), side)
    s2 = m.score(H([2, 1, 4]), side)
    assert not torch.allclose(s1, s2)                    # a bag model gives both the same scores
    torch.testing.assert_close(m.score(torch.tensor([0]), side), s1)   # user 0's sequence is 4, 1, 2


def test_cached_user_states_give_the_same_scores_and_training_drops_them():
    """cache_users(): known users ranked from stored last states (one matmul, as MF) score as
    the transformer does; train() drops the cache (the weights may change)."""
    m = _random_model()
    side = m.item_side()
    users = torch.tensor([0, 1, 2])
    live = m.score(users, side)
    m.cache_users()
    assert bool(m.user_state_ok)
    torch.testing.assert_close(m.score(users, m.item_side()), live, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.blocks[0].proj.weight.mul_(0)                 # a cached state no longer follows the weights ...
    assert torch.allclose(m.score(users, m.item_side()), live, rtol=1e-5, atol=1e-5)
    m.train()
    assert not bool(m.user_state_ok)                    # ... until training drops it
    assert not torch.allclose(m.eval().score(users, m.item_side()), live)


def test_items_without_training_are_scored_from_their_content():
    m = _random_model()
    E = m.item_table()
    # item 6: cold with tokens 0, 1 -> only its content pool; item 5: cold, no tokens -> zero row
    C6 = m.tok_weights[5] * m.token_emb.weight[0] + m.tok_weights[6] * m.token_emb.weight[1]
    torch.testing.assert_close(E[6], C6)
    assert torch.equal(E[5], torch.zeros(8))
    C0 = m.tok_weights[0] * m.token_emb.weight[0]        # a warm item: its id row plus its content
    torch.testing.assert_close(E[0], m.item_emb.weight[0] + C0)
    no_content = _random_model(content=False)
    assert torch.equal(no_content.item_table()[6], torch.zeros(8))
    # cold_k: in eval mode a cold item borrows its fill row's id rows (coldstart.py), never in training
    b = _random_model(cold_k=2)
    V = b.item_emb.weight
    torch.testing.assert_close(b.item_table()[6], C6 + 0.75 * V[0] + 0.5 * V[3])
    torch.testing.assert_close(b.item_table()[:6], E[:6])
    torch.testing.assert_close(b.train().item_table()[6], C6)


def test_cold_mixture_known_answer():
    """mix_cold: warm items' log-softmax among the warm plus log(1 - pi), cold items' log-softmax
    of s / temp among the cold plus log(pi); by hand for one row, both code paths."""
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    cold, pi, temp = torch.tensor([1, 3]), 0.2, 2.0
    lw = torch.log(torch.exp(torch.tensor(0.0)) + torch.exp(torch.tensor(2.0)))     # warm 0, 2
    lc = torch.log(torch.exp(torch.tensor(0.5)) + torch.exp(torch.tensor(1.5)))     # cold 1, 3 (halved)
    want0 = torch.stack([0 - lw + math.log(0.8), 0.5 - lc + math.log(0.2),
                         2 - lw + math.log(0.8), 1.5 - lc + math.log(0.2)])
    want1 = torch.log(torch.tensor([0.4, 0.1, 0.4, 0.1]))                          # equal logits
    with torch.no_grad():
        got = mix_cold(s.clone(), cold, pi, temp, rows=1)                          # in place, row blocks
    torch.testing.assert_close(got, torch.stack([want0, want1]))
    x = s.clone().requires_grad_(True)                                             # autograd's path
    torch.testing.assert_close(mix_cold(x, cold, pi, temp), got)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(2))


def test_cold_boost_mixes_cold_items_in_at_ranking_only():
    """cold_boost b: the 2 cold items of 7 share pi = 2b / (2b + 5) of the next event; warm items
    keep their order; training reads raw logits; an export without the field loads as b = 0."""
    raw = _random_model(cold_boost=0.0)
    m = _random_model(cold_boost=5.0, cold_temp=0.5)
    users = torch.tensor([0, 1, 2])
    side = m.item_side()
    assert torch.equal(side.cold, torch.tensor([5, 6])) and side.share == pytest.approx(10 / 15)
    s_raw = raw.score(users, raw.item_side())
    with torch.no_grad():
        want = mix_cold(s_raw.clone(), torch.tensor([5, 6]), 10 / 15, 0.5)
    torch.testing.assert_close(m.score(users, side), want)
    assert torch.equal(m.score(users, side)[:, :5].argsort(1), s_raw[:, :5].argsort(1))
    assert m.train().item_side().cold is None
    torch.testing.assert_close(m.score(users, m.item_side()), s_raw)               # train mode: logits
    cfg = {k: v for k, v in m.config.to_json().items() if k != "cold_boost"}
    back = Sequence.from_state(cfg, m.state_dict())
    assert back.config.cold_boost == 0.0
    for bad, msg in (({"cold_boost": -1.0}, "model.cold_boost=-1.0 must be"),
                     ({"cold_temp": 0.0}, "model.cold_temp=0.0 must be")):
        with pytest.raises(ValueError, match=msg):
            _random_model(**bad)


def test_learns_the_next_item_that_a_bag_model_cannot_tell(cyc):
    """After [3, 4, 5] comes 6, after [8, 9, 10] comes 11: top-1 by order. EASE sees the same
    sets with no direction and cannot prefer 6 over 2."""
    for hist, nxt in (([3, 4, 5], 6), ([8, 9, 10], 11), ([10, 11, 0], 1)):
        ids, _ = cyc.recommend_for_history(hist, k=1)
        assert ids.tolist() == [nxt], (hist, ids)
    # the same set in two orders: the newest run decides (a bag model answers both alike)
    assert cyc.recommend_for_history([3, 4, 5, 8, 9], k=1)[0].tolist() == [10]
    assert cyc.recommend_for_history([8, 9, 3, 4, 5], k=1)[0].tolist() == [6]
    # a known user: the item after their newest
    u = cyc.users.ids[0]
    indptr, indices = cyc.seen
    last = cyc.items.ids[int(indices[int(indptr[1]) - 1])]
    ids, _ = cyc.recommend(u, k=1, exclude_seen=False)
    assert ids.tolist() == [(last + 1) % N_ITEMS]


def test_batch_equals_single_and_export_round_trip(cyc, tmp_path):
    users = list(cyc.users.ids[:7])
    ids, sc = cyc.recommend(users, k=5)
    for r, u in enumerate(users):
        one_i, one_s = cyc.recommend(u, k=5)
        same_ranking(one_i, one_s, ids[r], sc[r])
    path = cyc.save_pretrained(str(tmp_path / "exp"))
    back = recsys.Recommender.from_pretrained(path)
    ids2, sc2 = back.recommend(users, k=5)
    assert np.array_equal(ids, ids2) and np.allclose(sc, sc2)
    h1, s1 = cyc.recommend_for_history([[3, 4, 5], [7]], k=4)
    h2, s2 = back.recommend_for_history([[3, 4, 5], [7]], k=4)
    assert np.array_equal(h1, h2) and np.allclose(s1, s2)


def test_new_items_are_reachable_and_grow_keeps_the_old_scores(cyc):
    """Items 12 and 13 never occur in training: they rank from content; add_items appends more
    the same way, and the old items' scores do not move."""
    full = cyc.scores([cyc.users.ids[0]])[0]
    assert torch.isfinite(full[[cyc.items.index([12])[0], cyc.items.index([13])[0]]]).all()
    ids, _ = cyc.recommend_for_history([3, 4, 5], k=N_ITEMS + 2, exclude_given=False)
    assert {12, 13} <= set(ids.tolist())
    before = cyc.recommend_for_history([3, 4, 5], k=5)
    import copy
    grown = copy.deepcopy(cyc)
    grown.add_items(pd.DataFrame({"item": [99], "title": ["film 99 odd"]}))
    after = grown.scores([cyc.users.ids[0]])[0]
    # cold_boost: one more cold item changes the mixture's normalisers and the cold share, so
    # every old warm item's score moves by one constant and every old cold item's by another
    cold = torch.tensor([cyc.items.index([12])[0], cyc.items.index([13])[0]])
    warm = torch.ones(len(full), dtype=torch.bool)
    warm[cold] = False
    for part in (warm, cold):
        d = after[:len(full)][part] - full[part]
        torch.testing.assert_close(d, d[:1].expand_as(d), rtol=0, atol=1e-5)
    assert 99 in grown.recommend_for_history([3, 4, 5], k=N_ITEMS + 3, exclude_given=False)[0].tolist()
    same = grown.recommend_for_history([3, 4, 5], k=5)
    old_warm = [i for i in before[0].tolist() if i < N_ITEMS]       # the trained items keep their order
    new_warm = [i for i in same[0].tolist() if i < N_ITEMS]
    assert new_warm == old_warm[:len(new_warm)]


def test_an_event_in_the_service_moves_the_users_next_answer(cyc, tmp_path):
    """Live events: appending an item to a user's sequence changes their next answer at once
    (no retraining); the answer equals the model's for the longer sequence."""
    from recsys.serve.service import Service
    path = cyc.save_pretrained(str(tmp_path / "exp"))
    svc = Service(path, event_log=str(tmp_path / "events.jsonl"))
    u = cyc.users.ids[3]
    indptr, indices = cyc.seen
    hist = [cyc.items.ids[j] for j in indices[int(indptr[3]):int(indptr[4])].tolist()]
    nxt = (hist[-1] + 1) % N_ITEMS
    first = svc.score("recommend", svc.served, {"k": 1}, [([u], None)])
    svc.add_events([(u, nxt, None)])
    second = svc.score("recommend", svc.served, {"k": 1}, [([u], None)])
    assert first != second
    want, _ = cyc.recommend_for_history(hist + [nxt], k=1)
    assert second[0][0]["items"] == want.tolist() == [(nxt + 1) % N_ITEMS]


def test_sampled_softmax_trains_and_bad_settings_name_themselves():
    inter, items = _cycle_data(n_users=30)
    rec = recsys.fit(inter, items, model="sequence", time_col="timestamp", max_epochs=30, dim=16, blocks=1,
                     max_len=8, dropout=0.0, optim={"lr": 0.02, "batch_size": 8, "loss": "sampled", "n_neg": 6})
    ids, _ = rec.recommend_for_history([3, 4, 5], k=2)
    assert 6 in ids.tolist()
    with pytest.raises(ValueError, match="model.heads=3"):
        recsys.fit(inter, model="sequence", dim=16, heads=3)
    with pytest.raises(ValueError, match="model.optim.loss='bpr' is not one of"):
        recsys.fit(inter, model="sequence", time_col="timestamp", max_epochs=1, optim={"loss": "bpr"})
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) \['alpha'\]"):
        recsys.fit(inter, model="sequence", alpha=0.5)


def test_sampled_loss_reads_only_the_rows_it_needs_and_equals_the_whole_table():
    """item_rows(items) equals item_table()[items] (training mode), and the sampled loss built
    from the batch's rows only equals the same loss over the whole table, gradients included."""
    import torch.nn.functional as F

    from recsys.train.sequence_module import SequenceModule
    m = _random_model().train()
    m.drop.p = 0.0
    for b in m.blocks:
        b.dropout, b.drop.p = 0.0, 0.0
    items = torch.tensor([6, 0, 3, 5])
    torch.testing.assert_close(m.item_rows(items), m.item_table()[items])
    mod = SequenceModule(m, {}, loss="sampled", n_neg=4)
    torch.manual_seed(3)
    loss = mod.training_step((torch.tensor([0, 2]),), 0)
    loss.backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    # the same negatives, the whole table
    torch.manual_seed(3)
    neg = torch.multinomial(mod.item_q, 4, replacement=True)
    from recsys.models.sequence import windows
    seqs, _ = windows(m.seq_indptr, m.seq_indices, torch.tensor([0, 2]), m.config.max_len + 1)
    inp, tgt = seqs[:, :-1], seqs[:, 1:]
    ok = (inp >= 0) & (tgt >= 0)
    E = m.item_table()
    h, y = m.encode(inp, E)[ok], tgt[ok]
    log_nq = torch.log(mod.item_q * 4)
    logits = torch.cat([((h * E[y]).sum(1) - log_nq[y])[:, None],
                        (h @ E[neg].t() - log_nq[neg]).masked_fill(neg[None, :] == y[:, None], float("-inf"))], 1)
    want = F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long))
    torch.testing.assert_close(loss, want)
    want.backward()
    for n, p in m.named_parameters():
        if n in g:
            torch.testing.assert_close(g[n], p.grad, rtol=1e-4, atol=1e-6)


def test_budget_batches_hold_every_user_once_within_the_budget():
    """optim.batch_events: each epoch every user once, no batch past the budget of padded
    positions (unless one row alone is longer), the same number of batches every epoch, a
    different shuffle each epoch and the same one again for a resumed epoch."""
    from recsys.train.sequence_module import _BudgetBatches, sequence_loader
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 60, (500,), generator=g)
    lengths[:3] = 300                                                # longer than the budget alone
    s = _BudgetBatches(lengths, 200, seed=1)
    epochs = []
    for e in range(3):
        s.set_epoch(e)
        batches = list(s)
        assert len(batches) == len(s)
        assert sorted(u for b in batches for u in b) == list(range(500))
        for b in batches:
            assert len(b) == 1 or len(b) * int(lengths[b].max()) <= 200, b
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    s.set_epoch(1)
    assert list(s) == epochs[1]
    # through the loader: users with >= 2 items, batch_events counted in padded positions
    indptr = torch.tensor([0, 1, 4, 9, 19])                          # lengths 1, 3, 5, 10
    got = [b[0].tolist() for b in sequence_loader(indptr, 1, 0, max_len=None, batch_events=10)]
    assert sorted(map(sorted, got)) == [[1, 2], [3]]
    with pytest.raises(ValueError, match=r"model.optim.batch_events=-1 must be an integer >= 0"):
        sequence_loader(indptr, 1, 0, batch_events=-1)


def test_a_blend_with_a_bag_model_keeps_the_sequence_order():
    """A blend whose part is the sequence model validates on each user's last event, reads a
    history in order (the bag part as a set), and with alpha 1 ranks as the sequence alone."""
    from recsys.train.specs import as_spec
    inter, items = _cycle_data(n_users=40)
    spec = {"kind": "blend", "alpha": 1.0, "norm": "zscore", "second": {"kind": "itemknn", "k": 5},
            "first": {"kind": "sequence", "dim": 16, "blocks": 1, "max_len": 8, "dropout": 0.0,
                      "optim": {"lr": 0.02, "batch_size": 8}}}
    assert as_spec(spec).valid_split == "last" and as_spec({**spec, "first": {"kind": "ease"}}).valid_split == "random"
    torch.manual_seed(0)
    rec = recsys.fit(inter, items, model=spec, time_col="timestamp", max_epochs=30)
    assert rec.scorer.reads_order
    a, _ = rec.recommend_for_history([3, 4, 5], k=1)
    b, _ = rec.recommend_for_history([5, 4, 3], k=1)
    assert a.tolist() == [6] and b.tolist() != [6]              # the order decides the next item
    alone = recsys.Recommender(rec.scorer.first, rec.users, rec.items, rec.tokens, rec.tokenizer, rec.seen,
                               rec.token_idf)
    assert alone.recommend_for_history([3, 4, 5], k=3)[0].tolist() == rec.recommend_for_history([3, 4, 5], k=3)[0].tolist()


def test_the_blend_seq_config_is_a_sequence_and_ease_blend(compose, tmp_path):
    import hydra
    from recsys.train.specs import SequenceSpec, resolved
    spec = hydra.utils.instantiate(compose(["model=blend_seq"], str(tmp_path)).model)
    assert spec.valid_split == "last" and spec.trains and isinstance(spec.first, SequenceSpec)
    p = resolved(spec)
    assert p["alpha"] == 0.9 and p["second"]["kind"] == "ease" and p["first"] == resolved(SequenceSpec())


def test_sampled_loss_trains_under_bf16_autocast():
    """trainer=gpu trains in bf16-mixed: the sampled loss's own backward gets float32 inputs
    whatever autocast made of the hidden states (here autocast on the CPU)."""
    from recsys.train.sequence_module import SequenceModule
    m = _random_model().train()
    mod = SequenceModule(m, {}, loss="sampled", n_neg=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mod.training_step((torch.tensor([0, 2]),), 0)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
