"""Validation NDCG@10 of one sequence-model setting on the shared leave-last split, every few
epochs (the loop that chose configs/model/sequence.yaml's defaults; never reads test):

    python benchmarks/sequence_tuning.py epochs=40 every=5 loss=full lr=0.002
    python benchmarks/sequence_tuning.py epochs=25 loss=full lr=0.002 content=false
    python benchmarks/sequence_tuning.py epochs=60 loss=sampled n_neg=4096 lr=0.002
    python benchmarks/sequence_tuning.py epochs=30 blend=ease       # then blends with EASE (lam 200)

key=value pairs: epochs, every, bs (users a batch), events (padded positions a batch, instead of
bs), loss (full | sampled), lr, n_neg, wd, seed, split (the leave_last folder), cold_grid=true
(after training: other cold fills and cold mixtures of the same model, with the validation
log-probability and the cold validation targets' ranks), blend (a bag
model of configs/model/: after training, validation of alpha * n_u(sequence) + (1 - alpha) *
n_u(that model) for alpha 0.5..1), and any SequenceConfig field (dim=128, dropout=0.1, ...).
"""
from __future__ import annotations

import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    from recsys.data.prepare import prepare_files
    from recsys.eval.evaluation import evaluate
    from recsys.train.build import build_sequence, eval_sets
    from recsys.train.sequence_module import SequenceModule, sequence_loader
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    epochs, every = int(args.pop("epochs", 40)), int(args.pop("every", 5))
    bs, loss, lr = int(args.pop("bs", 128)), args.pop("loss", "full"), float(args.pop("lr", 2e-3))
    n_neg, wd, seed = int(args.pop("n_neg", 1024)), float(args.pop("wd", 0)), int(args.pop("seed", 0))
    events, blend = int(args.pop("events", 0)), args.pop("blend", None)
    cold_grid = args.pop("cold_grid", "false") == "true"
    split = args.pop("split", os.path.join(ROOT, "..", "shared", "data", "ml-latest-small-splits", "leave_last"))
    params = {k: (v == "true" if v in ("true", "false") else float(v) if "." in v else int(v)) for k, v in args.items()}
    torch.manual_seed(seed)
    prep = prepare_files(train=os.path.join(split, "train.csv"), test=os.path.join(split, "test.csv"),
                         items=os.path.join(split, "items.csv"), valid_split="last", tokens={"min_count": 2})
    sets = {k: v for k, v in eval_sets(prep).items() if k.startswith("val_")}
    model = build_sequence(prep, **params)
    module = SequenceModule(model, sets, loss=loss, n_neg=n_neg, lr=lr, weight_decay=wd)
    opt = module.configure_optimizers()
    cold = torch.from_numpy(~prep.item_warm())          # no interaction in the validation run's train
    t0, best = time.perf_counter(), (0.0, 0)
    for ep in range(1, epochs + 1):
        model.train()
        loader = sequence_loader(model.seq_indptr, bs, seed, model.config.max_len, events)
        loader.sampler.set_epoch(ep - 1)
        for batch in loader:
            step_loss = module.training_step(batch, 0)
            opt.zero_grad()
            step_loss.backward()
            opt.step()
        if ep % every == 0:
            model.eval()
            with torch.no_grad():
                v, _ = evaluate(model, sets["val_target"], sets["val_seen"], [10], 1024, "val/")
            best = max(best, (v["val/ndcg@10"], ep))
            print(f"epoch {ep}: val ndcg@10 {v['val/ndcg@10']:.4f} hr@10 {v['val/recall@10']:.4f} "
                  f"{_cold(model, sets, cold)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"best val ndcg@10 {best[0]:.4f} at epoch {best[1]}: loss={loss} lr={lr} bs={bs} {params}")
    if blend:
        _blends(model.eval(), blend, prep, sets)
    if cold_grid:
        _cold_grid(model.eval(), prep, sets, cold)


@torch.no_grad()
def _cold(model, sets, cold: torch.Tensor) -> str:
    """The validation targets that are cold items: how many users, their Recall@20 and the
    median rank (1 = top) of each such target among the user's unseen items."""
    from recsys.eval.evaluation import evaluate, restrict_target
    target = restrict_target(sets["val_target"], cold)
    v, _ = evaluate(model, target, sets["val_seen"], [20], 1024, "c/")
    users = torch.nonzero(torch.diff(target[0])).flatten()
    if not len(users):
        return "cold: no users"
    s = model.score(users, model.item_side())                                          # (b, I)
    seen_p, seen_i = sets["val_seen"]
    for r, u in enumerate(users.tolist()):
        s[r, seen_i[seen_p[u]:seen_p[u + 1]]] = -float("inf")
    ranks = [int((s[r] > s[r, t]).sum()) + 1 for r, u in enumerate(users.tolist())
             for t in target[1][target[0][u]:target[0][u + 1]].tolist()]
    return (f"cold: {len(users)} users recall@20 {v['c/recall@20']:.3f} "
            f"ranks median {sorted(ranks)[len(ranks) // 2]} best {min(ranks)}")


@torch.no_grad()
def _cold_grid(model, prep, sets, cold) -> None:
    """After training: validation NDCG@10, the validation targets' mean log-probability and the
    cold targets' ranks for other cold fills (cold_k, cold_scale) and cold mixtures (cold_boost,
    cold_temp; models/sequence.py) of the same trained model. The defaults maximise the
    log-probability (the mixture is a probability model; NDCG@10 moves within noise)."""
    from dataclasses import replace

    from recsys.eval.evaluation import evaluate
    from recsys.train.build import fill_buffers
    base = model.config
    for k, scale in ((0, 1.0), (10, 1.0), (10, 2.0), (30, 2.0)):
        for name, t in fill_buffers(prep, k, scale).items():
            setattr(model, name, t)
        for boost, temp in [(0.0, 1.0)] + [(b, t) for t in (1.0, 2.0) for b in (2.0, 5.0, 10.0, 20.0)]:
            model.config = replace(base, cold_k=k, cold_scale=scale, cold_boost=boost, cold_temp=temp)
            v, _ = evaluate(model, sets["val_target"], sets["val_seen"], [10], 1024, "val/")
            print(f"cold_k {k} cold_scale {scale} cold_boost {boost} cold_temp {temp}: val ndcg@10 "
                  f"{v['val/ndcg@10']:.4f} log p {_log_p(model, sets):.4f} {_cold(model, sets, cold)}", flush=True)
    model.config = base


@torch.no_grad()
def _log_p(model, sets) -> float:
    """Mean over validation targets of log softmax(score) at the target (with cold_boost > 0 the
    scores are already log-probabilities)."""
    indptr, items = sets["val_target"]
    users = torch.repeat_interleave(torch.arange(len(indptr) - 1), torch.diff(indptr))
    side, total = model.item_side(), 0.0
    for a in range(0, len(users), 1024):
        s = torch.log_softmax(model.score(users[a:a + 1024], side), 1)
        total += float(s[torch.arange(len(s)), items[a:a + 1024]].sum())
    return total / max(len(users), 1)


def _blends(model, kind: str, prep, sets) -> None:
    """Validation NDCG@10 of the blend of the trained sequence model (its last epoch) with the
    bag model of configs/model/KIND.yaml, over alpha."""
    import yaml

    from recsys.eval.evaluation import evaluate
    from recsys.models.blend import Blend
    from recsys.train.build import build_memory
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "model", f"{kind}.yaml")))
    cfg = {k: v for k, v in cfg.items() if k not in ("_target_", "_convert_", "search_space", "defaults")}
    bag = build_memory(prep, cfg).eval()
    for alpha in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0):
        with torch.no_grad():
            v, _ = evaluate(Blend(model, bag, alpha), sets["val_target"], sets["val_seen"], [10], 1024, "val/")
        print(f"blend with {kind}, alpha {alpha}: val ndcg@10 {v['val/ndcg@10']:.4f}", flush=True)


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    main()
