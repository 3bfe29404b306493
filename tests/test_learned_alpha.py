"""Learned alpha: trained through its own loss, kept in (0, 1), saved and reloaded with the export."""
from __future__ import annotations

import lightning as L
import torch

from recsys import Recommender
from recsys.train.build import build_scorer, eval_sets
from recsys.data.prepare import prepare_files
from recsys.serve.export import save_export
from recsys.train.module import RecsysModule, train_loader, user_loader


def test_learned_alpha_moves_and_round_trips(tiny_files, tmp_path):
    """With learn_alpha the blend weight is a parameter: training changes it, it stays inside
    (0, 1), and an export reloads it exactly (identical scores)."""
    L.seed_everything(0)
    prep = prepare_files(train=tiny_files["train"], test=tiny_files["test"], items=tiny_files["items"])
    scorer = build_scorer(prep, variant="hybrid", dim=8, alpha=0.5, learn_alpha=True)
    before = float(scorer.alpha)
    sets = eval_sets(prep)
    module = RecsysModule(scorer, sets, loss="softmax", n_neg=16, lr=0.05)
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, train_loader(prep.train, 64, 0), user_loader(sets["val_target"][0], 64))
    after = float(scorer.alpha)
    assert after != before
    assert 0.0 < after < 1.0
    path = save_export(str(tmp_path / "export"), scorer, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       sets["test_seen"], torch.from_numpy(prep.bags.idf))
    rec = Recommender.from_pretrained(path)
    assert float(rec.scorer.alpha) == after
    users = torch.arange(prep.n_users)
    with torch.no_grad():
        assert torch.equal(rec.scorer(users), scorer.eval()(users))
