"""Known-answer training through the Lightning module: on a parity checkerboard every variant
learns to put each user's held-out diagonal item first."""
from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from recsys.train.build import build_scorer, eval_sets
from recsys.data.prepare import prepare_files
from recsys.eval.ranking import topk
from recsys.train.module import RecsysModule, train_loader, user_loader

from helpers import random_scorer, write_csv

N = 20
# All three variants reach top-1 = diagonal for every user with these settings for seeds 0..14
# already after 10 epochs (30 leave a margin); untrained, or after 1 epoch, they do not. A run
# takes under a second on one thread.
HPARAMS = dict(dim=16, loss="bpr", n_neg=8, lr=0.05, batch_size=32, epochs=30)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and OpenMP threads competing with other
    processes for 2 cores make each op orders of magnitude slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def checkerboard(tmp_path):
    """User u has every item j of u's parity except j = u (held out as the test item); item j's
    text is 'even'/'odd' plus a token of its own."""
    train = [(u, j) for u in range(N) for j in range(N) if j % 2 == u % 2 and j != u]
    test = [(u, u) for u in range(N)]
    items = [(j, f"{'even' if j % 2 == 0 else 'odd'} only{j}") for j in range(N)]
    return prepare_files(train=write_csv(tmp_path / "train.csv", ["user", "item"], train),
                         test=write_csv(tmp_path / "test.csv", ["user", "item"], test),
                         items=write_csv(tmp_path / "items.csv", ["item", "text"], items),
                         valid_ratio=0.0)


def train(prep, variant: str, seed: int):
    h = HPARAMS
    L.seed_everything(seed, workers=False, verbose=False)
    scorer = build_scorer(prep, variant=variant, dim=h["dim"], alpha=0.5)
    sets = eval_sets(prep)
    module = RecsysModule(scorer, sets, loss=h["loss"], n_neg=h["n_neg"], lr=h["lr"], ks=(1,))
    trainer = L.Trainer(max_epochs=h["epochs"], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu",
                        devices=1)
    trainer.fit(module, train_loader(prep.train, h["batch_size"], seed))
    return module, trainer, sets


def test_checkerboard_data_is_as_designed(tmp_path):
    """prepare_files gives 20 users x 20 items with indices = ids, 9 training items each,
    no validation rows, the diagonal as test and 2 + 20 content tokens."""
    prep = checkerboard(tmp_path)
    assert prep.users.ids == list(range(N)) and prep.items.ids == list(range(N))
    assert len(prep.train) == N * 9 and len(prep.valid) == 0
    assert sorted(map(tuple, prep.test.tolist())) == [(u, u) for u in range(N)]
    assert len(prep.tokens) == 1 + 2 + N
    assert prep.item_warm().all()


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`", "ignore:.*LeafSpec")
@pytest.mark.parametrize("variant", ["collaborative", "content", "hybrid"])
def test_each_user_top1_is_the_held_out_diagonal(tmp_path, variant, caplog):
    """After training, user u's top-1 with training items masked is item u, for all 20 users,
    and the module's own test loop reports hit@1 = 1."""
    caplog.set_level(logging.WARNING)
    prep = checkerboard(tmp_path)
    module, trainer, sets = train(prep, variant, seed=0)
    scorer = module.scorer.eval()
    users = torch.arange(N)
    top, _ = topk(scorer, users, 1, sets["test_seen"])
    assert top[:, 0].tolist() == list(range(N))
    trainer.test(module, user_loader(sets["test_target"][0], chunk_size=7), verbose=False)
    assert module.last_test_metrics["test/hit@1"] == pytest.approx(1.0)
    assert module.last_test_metrics["test/ndcg@1"] == pytest.approx(1.0)


def _step_loss(monkeypatch, n_neg: int) -> torch.Tensor:
    scorer = random_scorer("hybrid", learn_alpha=True, alpha=0.5)
    module = RecsysModule(scorer, {}, loss="bpr", n_neg=n_neg)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    torch.manual_seed(0)
    users = torch.tensor([0, 1, 2])
    pos = scorer.hist_indices[scorer.hist_indptr[users]]          # each user's first history item
    loss = module.training_step((torch.stack([users, pos], 1),), 0)
    loss.backward()
    return loss, scorer.alpha_logit.grad


def test_learned_alpha_step_is_finite(monkeypatch):
    """A hybrid step with learned alpha and 2 shared negatives has a finite loss and alpha grad."""
    loss, grad = _step_loss(monkeypatch, 2)
    assert torch.isfinite(loss) and torch.isfinite(grad) and grad != 0


def test_learned_alpha_step_is_finite_with_one_negative(monkeypatch):
    """n_neg=1 is accepted, so a learned-alpha step with one negative must stay finite."""
    loss, grad = _step_loss(monkeypatch, 1)
    assert torch.isfinite(loss) and torch.isfinite(grad)
