"""Train a recommender: python train.py [model=hybrid model.alpha=0.3 trainer.max_epochs=20 ...]

Everything of a run goes under its Hydra run dir (by default outputs/DATE/TIME_MODEL, or
hydra.run.dir=DIR): tensorboard/,
checkpoints/, export/, split/, metrics.json, per_user.csv and run_info.json
(recsys/train/run.py). Hydra stays here: it composes the config and instantiates the data, the
model spec (configs/model/*.yaml, `_target_`), the trainer, callbacks and loggers; recsys/ sees
plain values.
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
import lightning as L
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from recsys.eval.evaluation import format_table
from recsys.data.files import write_json_atomic
from recsys.train.build import eval_sets
from recsys.train.progress import progress_callbacks
from recsys.train.run import (RunLock, best_validation, checkpoint_path, data_files, final_report, log_run, log_trials,
                              run_info, write_run)
from recsys.train.search import select_and_fit, write_trials
from recsys.train.specs import FitContext

log = logging.getLogger("train")


def run(cfg: DictConfig) -> dict:
    """The run folder is a small state machine (recsys/train/run.py RunLock): a refused run
    (folder busy or finished, a resume with another model or without a checkpoint, a bad model
    config) writes nothing into it; a run that fails leaves it "failed", to rerun or resume."""
    out = cfg.paths.output_dir
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed={cfg.seed!r} must be an integer")
    spec = hydra.utils.instantiate(cfg.model)          # checks the model's parameters first
    if spec.trains and cfg.trainer.get("max_epochs") is not None and int(cfg.trainer.max_epochs) < 1:
        raise ValueError(f"trainer.max_epochs={cfg.trainer.max_epochs} trains nothing: a learned model "
                         f"needs at least one epoch")
    if not _is_rank_zero():
        return _run(cfg, out, spec, checkpoint_path(cfg.ckpt_path, out))
    lock = RunLock(out, resume=bool(cfg.ckpt_path), model=OmegaConf.to_container(cfg.model, resolve=True))
    try:
        ckpt = checkpoint_path(cfg.ckpt_path, out)
        lock.accept()                                  # from here the folder is this run's (and train.log)
        record_config(cfg, out)
        metrics = _run(cfg, out, spec, ckpt)
        lock.mark("finished")
        return metrics
    except BaseException as e:
        lock.fail(e)                                   # an accepted folder holds a failed run now
        raise
    finally:
        lock.release()


def record_config(cfg: DictConfig, out: str) -> None:
    """What Hydra would have written into the run folder (.hydra/config.yaml, overrides.yaml),
    written once the folder is this run's."""
    from hydra.core.hydra_config import HydraConfig
    os.makedirs(os.path.join(out, ".hydra"), exist_ok=True)
    OmegaConf.save(cfg, os.path.join(out, ".hydra", "config.yaml"))
    if HydraConfig.initialized():
        OmegaConf.save(OmegaConf.create(list(HydraConfig.get().overrides.task)),
                       os.path.join(out, ".hydra", "overrides.yaml"))


def _run(cfg: DictConfig, out: str, spec, ckpt: str | None) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(cfg.seed, workers=True)
    data = {k: v for k, v in config["data"].items() if k != "refit"}     # refit: select_and_fit's
    prep = hydra.utils.instantiate(data)
    write_json_atomic(os.path.join(out, "run_info.json"), run_info(config, cfg.seed, data_files(config["data"])))
    sets = eval_sets(prep, cfg.get("val_users"), cfg.seed)

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    # a bar on a terminal, one line per epoch in a log file (recsys/train/progress.py)
    callbacks += progress_callbacks(cfg.progress, bool(cfg.trainer.get("enable_progress_bar", True)))
    # TensorBoard (configs/logger/tensorboard.yaml): curves during training, the summary,
    # HParams and Projector at the end (log_run)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    device = "cuda" if cfg.trainer.accelerator != "cpu" and _cuda() else "cpu"
    ctx = FitContext(trainer=hydra.utils.instantiate(cfg.trainer, _partial_=True), callbacks=callbacks,
                     loggers=loggers, ks=tuple(cfg.ks), eval_chunk=cfg.eval_chunk, seed=cfg.seed, ckpt_path=ckpt,
                     device=device, optimized_metric=cfg.optimized_metric)
    search = OmegaConf.to_container(cfg.search, resolve=True) if cfg.get("search") else None
    choice = select_and_fit(spec, prep, sets, ctx, search, cfg.data.get("refit", "auto"))
    model, metrics = choice.model, choice.metrics
    logged = set(metrics)                 # what Lightning's test loop gave the loggers already
    metrics[f"best/{cfg.optimized_metric}"] = choice.best
    if not _is_rank_zero():   # DDP: the other processes trained and tested with rank 0; it writes
        return metrics
    if choice.result is not None:
        write_trials(os.path.join(out, "trials.csv"), choice.result)
        log_trials(loggers, choice.result, cfg.seed)
    # the report on the data the final model was fitted on (train + valid after a refit)
    diversity = OmegaConf.to_container(cfg.diversity, resolve=True) if cfg.get("diversity") else None
    report, per_user = final_report(model, choice.prep, choice.sets, cfg.ks, cfg.eval_chunk, device,
                                    cfg.report.history_buckets, cfg.report.head_share, diversity)
    if diversity and diversity.get("method"):
        choice.info["diversity"] = diversity          # the export says its test figures are re-ranked
    metrics.update(report)
    # TensorBoard also shows every validation metric of the best epoch (from what it logged)
    best, best_epoch, epochs = best_validation(loggers, cfg.optimized_metric)
    log_run(loggers, model, choice.prep, {**best, **metrics}, choice.info["model"], cfg.seed, cfg.ks,
            projector=cfg.report.projector, best_epoch=best_epoch, epochs=epochs, logged=logged,
            searched_metric=cfg.optimized_metric if choice.result is not None else None)
    metrics["data"] = prep.report
    write_run(out, model, prep, sets, metrics, per_user, cfg.report.history_buckets, choice.info)
    print(format_table(metrics))
    log.info("run folder: %s", out)
    return metrics


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _is_rank_zero() -> bool:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = run(cfg)
    except (ValueError, OSError, InstantiationException) as e:   # bad input or config: one line
        log.error("%s: %s", type(e).__name__, " ".join(str(e).split()))
        sys.exit(1)
    return metrics[f"best/{cfg.optimized_metric}"]


if __name__ == "__main__":
    main()
