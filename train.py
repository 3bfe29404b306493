"""Train a recommender: python train.py [model=hybrid model.alpha=0.3 trainer.max_epochs=20 ...]

Everything of a run goes under its Hydra run dir (hydra.run.dir=DIR): tensorboard/,
checkpoints/, export/, split/ and metrics.json. Hydra stays here; recsys/ sees plain values.
"""
from __future__ import annotations

import logging
import os
import time

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from recsys.train.build import build_memory, build_scorer, eval_sets, new_user_sets, report_context
from recsys.eval.evaluation import evaluate, format_table
from recsys.serve.export import save_export, write_json_atomic
from recsys.train.module import RecsysModule, train_loader, user_loader
from recsys.train.tune import choose_fold_in_lambda

log = logging.getLogger("train")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def fit_learned(cfg: DictConfig, prep, sets, model: dict, callbacks, loggers, test: bool = True):
    """Train the learned scorer with Lightning; returns (scorer, test metrics, best val metric).
    test=False skips Lightning's test loop (a blend part: the blend is tested, not the part)."""
    optim = model.pop("optim")
    batch_size = optim.pop("batch_size")
    fold = model.pop("fold_in_lambda", "auto")
    if fold != "auto":
        model["fold_in_lambda"] = float(fold)
    scorer = build_scorer(prep, **model)
    module = RecsysModule(scorer, sets, ks=tuple(cfg.ks), **optim)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    ckpt = cfg.ckpt_path
    if ckpt == "last":
        ckpt = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    # weights_only: a checkpoint to resume from is read without unpickling code objects
    trainer.fit(module, train_loader(prep.train, batch_size, cfg.seed),
                user_loader(sets["val_target"][0], cfg.eval_chunk), ckpt_path=ckpt, weights_only=True)
    best_ckpt = next((c.best_model_path for c in callbacks
                      if isinstance(c, L.pytorch.callbacks.ModelCheckpoint) and c.best_model_path), None)
    if best_ckpt:  # weights only: checkpoints hold plain tensors and primitives
        state = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=True)
    if fold == "auto" and scorer.config.uses_cf:   # the MF fold-in weight for users outside the model
        choose_fold_in_lambda(scorer, sets["val_seen"], sets["val_target"])
    if test:
        trainer.test(module, user_loader(sets["test_target"][0], cfg.eval_chunk), verbose=False)
    best = next((c.best_model_score for c in callbacks if getattr(c, "best_model_score", None) is not None), None)
    best = float(best) if best is not None else float(trainer.callback_metrics.get(cfg.optimized_metric, float("nan")))
    metrics = dict(module.last_test_metrics) if test else {}
    metrics["trainer/world_size"] = trainer.world_size
    # the test loop's own figures (sharded over processes under DDP, then summed): the final
    # report below recomputes test/* in one pass; the two must agree
    metrics.update({f"loop/{k}": v for k, v in metrics.items() if k.endswith(("ndcg@10", "recall@20"))})
    if scorer.config.uses_cf:
        metrics["fold_in/lambda"] = scorer.config.fold_in_lambda
    return scorer.cpu().eval(), metrics, best      # eval mode: Lightning leaves it training


def fit_closed_form(cfg: DictConfig, prep, sets, model: dict, loggers):
    """Memory-based / closed-form models: fit once (no epochs), evaluate, log like a training run."""
    use_cuda = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    t0 = time.perf_counter()
    scorer = build_memory(prep, model, device=str(device))
    fit_s = time.perf_counter() - t0
    on = {k: tuple(t.to(device) for t in v) for k, v in sets.items()}
    val, _ = evaluate(scorer, on["val_target"], on["val_seen"], list(cfg.ks), cfg.eval_chunk, "val/")
    for lg in loggers:
        lg.log_metrics({**val, "fit/seconds": fit_s}, step=0)
    log.info("fitted %s in %.2f s on %s", model.get("kind"), fit_s, device)
    # test metrics: final_report(), like the learned models
    return scorer.cpu(), {"fit/seconds": fit_s}, val.get(cfg.optimized_metric, float("nan"))


def fit_learned_blend(cfg: DictConfig, prep, sets, model: dict, callbacks, loggers):
    """A blend with a learned part: train that part with Lightning (early stopping on its own
    val/ndcg@10), fit the other part without epochs, blend them (recsys.models.memory.Blend)."""
    from recsys.models.blend import Blend
    parts = {}
    best = float("nan")
    for name in ("first", "second"):
        sub = dict(model[name])
        if sub.get("kind") == "learned":
            sub.pop("kind")
            parts[name], _, best = fit_learned(cfg, prep, sets, sub, callbacks, loggers, test=False)
        else:
            parts[name] = build_memory(prep, sub)
    return Blend(parts["first"], parts["second"], model.get("alpha", 0.5), model.get("norm", "zscore")), {}, best


def final_report(cfg: DictConfig, scorer, prep, sets, loggers, logged=()) -> tuple[dict, dict]:
    """Test metrics with slices (history length, cold/warm items) and beyond-accuracy metrics,
    from one more full-ranking pass of the final model; logged to every logger under test/
    (except the names in `logged`, which Lightning's test loop has logged already)."""
    use_cuda = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    scorer = scorer.to(device).eval()
    ctx = report_context(prep, cfg.report.history_buckets, cfg.report.head_share)
    report, per_user = evaluate(scorer, tuple(t.to(device) for t in sets["test_target"]),
                                tuple(t.to(device) for t in sets["test_seen"]), list(cfg.ks),
                                cfg.eval_chunk, "test/", context=ctx)
    new = new_user_sets(prep)
    if new is not None:   # new-user protocol: scored from their given history, no retraining
        try:
            given = tuple(t.to(device) for t in new["given"])
            more, _ = evaluate(scorer, tuple(t.to(device) for t in new["target"]), given, list(cfg.ks),
                               cfg.eval_chunk, "test/new_users/", histories=given)
            report.update(more)
        except ValueError as e:       # a model that cannot score histories: logged, not fatal
            log.warning("new users not evaluated: %s", e)
    scorer.cpu()
    for lg in loggers:
        lg.log_metrics({k: v for k, v in report.items() if k not in logged}, step=0)
        if cfg.report.projector:
            _projector(lg, scorer, prep)
        lg.finalize("success")
    return report, per_user


def _projector(lg, scorer, prep) -> None:
    """Item embeddings in TensorBoard's Projector, labelled with item titles (learned models)."""
    exp = getattr(lg, "experiment", None)
    if exp is None or not hasattr(exp, "add_embedding"):
        return
    tables = {}
    if getattr(scorer, "config", None) is not None and hasattr(scorer, "item_emb"):
        tables["items/collaborative"] = scorer.item_emb.weight.detach()
    if hasattr(scorer, "item_content") and getattr(scorer.config, "uses_content", False):
        with torch.no_grad():
            tables["items/content"] = scorer.item_content().detach()
    titles = [str(t).replace("\t", " ").replace("\n", " ") or "(untitled)" for t in prep.item_titles]
    for tag, mat in tables.items():
        exp.add_embedding(mat.cpu(), metadata=titles, tag=tag)


def write_per_user(path: str, per_user: dict, prep, buckets) -> None:
    """Per-user test metrics (external user ids) for paired run comparisons (evaluate.py compare=)."""
    import pandas as pd
    from recsys.eval.evaluation import bucket_labels
    df = pd.DataFrame({"user": [prep.users.ids[int(u)] for u in per_user["user"]]})
    if "bucket" in per_user:
        labels = bucket_labels(sorted(buckets))
        df["history"] = [labels[int(b)] for b in per_user["bucket"]]
    for name, v in per_user.items():
        if "@" in name:
            df[name] = v.double().numpy()
    tmp = path + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _sha256(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_info(cfg: DictConfig) -> dict:
    """What is needed to reproduce the run: resolved config, versions, data checksums, seeds."""
    import platform
    import recsys
    files = []
    d = cfg.data
    if d.get("path"):
        files += sorted(os.path.join(d.path, f) for f in os.listdir(d.path) if f.endswith((".csv", ".parquet")))
    files += [d.get(k) for k in ("interactions", "train", "valid", "test", "items") if d.get(k)]
    return {"recsys": recsys.__version__, "torch": torch.__version__, "lightning": L.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "seed": int(cfg.seed), "split": OmegaConf.to_container(d.get("split"), resolve=True) if d.get("split") else None,
            "data_sha256": {os.path.abspath(f): _sha256(f) for f in files if os.path.exists(f)},
            "config": OmegaConf.to_container(cfg, resolve=True)}


def run(cfg: DictConfig) -> dict:
    out = cfg.paths.output_dir
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "run_info.json"), run_info(cfg))
    L.seed_everything(cfg.seed, workers=True)
    prep = hydra.utils.instantiate(cfg.data)
    sets = eval_sets(prep)
    model = OmegaConf.to_container(cfg.model, resolve=True)

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    metric_names = [f"{s}/{m}@{k}" for s in ("val", "test") for m in ("ndcg", "recall") for k in cfg.ks]
    for lg in loggers:
        lg.log_hyperparams(_flat(OmegaConf.to_container(cfg, resolve=True)),
                           metrics={m: float("nan") for m in metric_names})

    if model.get("kind", "learned") == "learned":
        model.pop("kind", None)
        scorer, metrics, best = fit_learned(cfg, prep, sets, model, callbacks, loggers)
    elif model.get("kind") == "blend" and "learned" in (model["first"].get("kind"), model["second"].get("kind")):
        scorer, metrics, best = fit_learned_blend(cfg, prep, sets, model, callbacks, loggers)
    else:
        scorer, metrics, best = fit_closed_form(cfg, prep, sets, model, loggers)
    metrics[f"best/{cfg.optimized_metric}"] = best
    if not _is_rank_zero():   # DDP: the other processes trained and tested with rank 0; it writes
        return metrics
    report, per_user = final_report(cfg, scorer, prep, sets, loggers, logged=set(metrics))
    metrics.update(report)
    metrics["data"] = prep.report
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    write_per_user(os.path.join(out, "per_user.csv"), per_user, prep, cfg.report.history_buckets)

    if _is_rank_zero():
        os.makedirs(os.path.join(out, "split"), exist_ok=True)
        for part in ("train", "valid", "test"):
            prep.split_frame(part).to_csv(os.path.join(out, "split", f"{part}.csv"), index=False)
        save_export(os.path.join(out, "export"), scorer, prep.users, prep.items, prep.tokens,
                    prep.tokenizer, sets["test_seen"], torch.from_numpy(prep.bags.idf), prep.item_titles,
                    meta={"metrics": {k: v for k, v in metrics.items() if k != "data"},
                          "text_fields": prep.text_fields})
    print(format_table(metrics))
    log.info("run folder: %s", out)
    return metrics


def _is_rank_zero() -> bool:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = run(cfg)
    return metrics[f"best/{cfg.optimized_metric}"]


if __name__ == "__main__":
    main()
