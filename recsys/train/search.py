"""Model selection on validation data, and the refit of the winner on train + validation.

A search space is declared next to each model's config (configs/model/*.yaml, `search_space:`),
one entry per parameter, dotted for nested ones (`optim.lr`, `first.lam`):

    lam:        {low: 10, high: 5000, log: true}          a float
    k:          {type: int, low: 10, high: 400, log: true}
    similarity: {choices: [cosine, jaccard]}             a categorical

A learned model's number of epochs is not a parameter of the space: each trial trains with early
stopping on validation, and the epoch of its best validation value is what the refit trains for.

    result = search(spec, space, prep, sets, ctx, trials=20)       Optuna TPE (seeded)
    final = refit_data(prep)                                        train + valid, no valid part

Each trial is fitted on `prep.train` and scored on the validation part only: the sets it is
given hold `val_*` and nothing else, so a trial that reached for the test split would fail.
Learned trials report their validation metric every epoch and are stopped early by Optuna's
median pruner when they fall behind the earlier trials at the same epoch.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from lightning.pytorch.callbacks import Callback

from recsys.eval.compare import paired
from recsys.eval.evaluation import evaluate
from recsys.train.build import eval_sets
from recsys.train.specs import as_spec
from recsys.train.tune import choose_fold_in_lambda


log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")


@dataclass
class SearchResult:
    """best_params: the winning point of the space; best_value: its validation metric;
    best_epochs: the epochs the refit trains a learned winner for (None otherwise); trials:
    one dict per trial (number, state, value, seconds, epochs, params); spec: the winning spec
    (with best_params applied); model: the winning trial's model (fitted on train only)."""
    best_params: dict
    best_value: float
    best_epochs: int | None
    trials: list[dict]
    spec: Any
    model: Any = None
    metric: str = "val/ndcg@10"
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def parse_space(space: dict | None) -> dict[str, dict]:
    """Checks a declared space; {name: {"type": float|int|categorical, ...}}. One-line
    ValueError naming the parameter at fault."""
    out = {}
    for name, p in (space or {}).items():
        if not isinstance(p, Mapping):
            raise ValueError(f"search_space.{name} must be a mapping like {{low: 1, high: 10}} or {{choices: [...]}}")
        p = dict(p)
        kind = p.pop("type", None) or ("categorical" if "choices" in p else
                                       "int" if isinstance(p.get("low"), int) and isinstance(p.get("high"), int)
                                       and not p.get("log") else "float")
        if kind == "categorical":
            choices = list(p.get("choices") or [])
            if not choices:
                raise ValueError(f"search_space.{name}.choices is empty")
            out[name] = {"type": "categorical", "choices": choices}
            continue
        if kind not in ("float", "int"):
            raise ValueError(f"search_space.{name}.type={kind!r} is not one of float, int, categorical")
        if "low" not in p or "high" not in p:
            raise ValueError(f"search_space.{name} needs low and high")
        low, high, lg = float(p["low"]), float(p["high"]), bool(p.get("log", False))
        if not low <= high or (lg and low <= 0):
            raise ValueError(f"search_space.{name}: low={p['low']} high={p['high']} log={lg} is not a valid range")
        out[name] = {"type": kind, "low": int(low) if kind == "int" else low,
                     "high": int(high) if kind == "int" else high, "log": lg}
    return out


def suggest(trial, name: str, p: dict):
    if p["type"] == "categorical":
        return trial.suggest_categorical(name, p["choices"])
    if p["type"] == "int":
        return trial.suggest_int(name, p["low"], p["high"], log=p["log"])
    return trial.suggest_float(name, p["low"], p["high"], log=p["log"])


def with_params(config: dict, params: dict) -> dict:
    """A copy of a spec's config dict with dotted `params` set (`optim.lr`, `first.lam`)."""
    out = copy.deepcopy(config)
    for name, value in params.items():
        node, *path = name.split(".")[::-1]
        d = out
        for key in reversed(path):
            if not isinstance(d.get(key), dict):
                raise ValueError(f"search_space.{name}: the model config has no section {key!r}")
            d = d[key]
        d[node] = value
    return out


def optimise(objective: Callable[[Any], float], space: dict, trials: int | None = None,
             minutes: float | None = None, seed: int = 2026, sampler: str = "tpe", jobs: int = 1,
             prune: bool = True, first: dict | None = None):
    """An Optuna study maximising objective(trial) over `space` (parse_space form). Ends after
    `trials` trials or `minutes`, whichever first (at least one of them); `first`: the point the
    study tries first (trial 0; not with the grid sampler). Returns the study."""
    import optuna
    if sampler not in SAMPLERS:
        raise ValueError(f"search.sampler={sampler!r} is not one of {SAMPLERS}")
    if not trials and not minutes:
        raise ValueError("search needs search.trials > 0 or search.minutes > 0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler == "grid":
        grid = {n: p["choices"] for n, p in space.items() if p["type"] == "categorical"}
        if len(grid) != len(space):
            raise ValueError("search.sampler=grid needs every parameter of the space as choices")
        s = optuna.samplers.GridSampler(grid, seed=seed)
        trials = min(trials or math.prod(len(v) for v in grid.values()), math.prod(len(v) for v in grid.values()))
    elif sampler == "random":
        s = optuna.samplers.RandomSampler(seed=seed)
    else:
        s = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, (trials or 10) // 3)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=s, pruner=pruner)
    if first and sampler != "grid":
        study.enqueue_trial(first)
    study.optimize(objective, n_trials=trials or None, timeout=minutes * 60 if minutes else None, n_jobs=jobs,
                   catch=())
    return study


def search(spec, space: dict | None, prep, sets: dict, ctx, trials: int | None = 20, minutes: float | None = None,
           sampler: str = "tpe", jobs: int = 1, patience: int = 3, prune: bool = True,
           guard: float | None = 0.05) -> SearchResult:
    """Search `space` for `spec` (train/specs.py) on validation; see the module docstring.

    The spec's own values are trial 0 when they lie in the space. guard (a p-value, None: off):
    the best trial replaces that default only if its per-user validation metric is higher with
    a paired sign-flip test p < guard (eval/compare.paired); a small validation part cannot
    tell apart configurations closer than its noise, and picking by noise lost test accuracy
    (benchmarks/README.md, "Model selection")."""
    space = parse_space(space)
    val_sets = {k: v for k, v in sets.items() if k.startswith("val_")}    # no test part, ever
    if int(val_sets["val_target"][1].numel()) == 0:
        raise ValueError("search needs a validation part: set data.valid_ratio > 0 (or data.valid=FILE)")
    base = spec.to_dict()
    metric = ctx.optimized_metric
    kept: dict = {}
    lock = threading.Lock()

    def objective(trial) -> float:
        params = {n: suggest(trial, n, p) for n, p in space.items()}
        cfg = with_params(base, params)
        if cfg.get("kind") == "learned" and cfg.get("fold_in_lambda") == "auto":
            cfg["fold_in_lambda"] = 1.0       # chosen once, for the winner (below), not per trial
        trial_spec = as_spec(cfg)
        curve = EpochCurve(metric, trial if prune else None)
        tctx = dataclasses.replace(ctx, callbacks=_trial_callbacks(trial_spec, metric, patience) + [curve],
                                   loggers=[], ckpt_path=None, trainer=_quiet(ctx.trainer))
        t0 = time.perf_counter()
        model, _, best = trial_spec.fit(prep, val_sets, tctx, test=False)
        if trial_spec.epoch_curve:     # Lightning epochs of one model: the curve's best
            value = curve.best if curve.values else float(best)
        elif trial_spec.trains:        # a blend with a learned part: the blend itself is validated
            m, _ = evaluate(model, val_sets["val_target"], val_sets["val_seen"], list(ctx.ks), ctx.eval_chunk, "val/")
            value = float(m.get(metric, float("nan")))
        else:
            value = float(best)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("epochs", curve.best_epoch if curve.values else None)
        if not math.isfinite(value):
            value = float("-inf")
        with lock:                      # search.jobs > 1: trials finish on several threads
            if not kept or value > kept["value"]:
                kept.update(value=value, model=model, number=trial.number)
            if default is not None and trial.number == 0:
                kept["default"] = model
        log.info("trial %d: %s -> %s %.4f (%.1f s)", trial.number, params, metric, value,
                 trial.user_attrs["seconds"])
        return value

    default = _defaults(base, space) if sampler != "grid" else None
    t0 = time.perf_counter()
    if not space:   # nothing declared: the one configuration is the winner
        study = optimise(objective, {}, 1, None, ctx.seed, "random", 1, False)
    else:
        study = optimise(objective, space, trials, minutes, ctx.seed, sampler, jobs, prune, first=default)
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": t.value if t.value is not None else (max(t.intermediate_values.values())
                                                                    if t.intermediate_values else None),
                     "seconds": t.user_attrs.get("seconds"), "epochs": t.user_attrs.get("epochs"),
                     **{f"params.{k}": v for k, v in t.params.items()}})
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        raise ValueError("search: no trial completed")
    best = max(done, key=lambda t: (t.value, -t.number))
    model = kept.get("model")
    extra: dict = {}
    base_trial = study.trials[0] if default is not None and study.trials[0].state.name == "COMPLETE" else None
    if guard is not None and base_trial is not None and best.number != 0 and "default" in kept:
        name = metric.split("/", 1)[-1]
        per = [evaluate(m, val_sets["val_target"], val_sets["val_seen"], list(ctx.ks), ctx.eval_chunk, "val/")[1][name]
               for m in (kept["default"], model)]
        test = paired(per[0].cpu().numpy(), per[1].cpu().numpy(), seed=ctx.seed)
        keep_default = not (test["diff"] > 0 and test["p"] < guard)
        extra["vs_default"] = {"gain": float(test["diff"]), "p": float(test["p"]), "kept_default": keep_default}
        log.info("search: best trial %d vs the config's own values: %+.4f %s, paired p = %.3f -> %s", best.number,
                 test["diff"], metric, test["p"], "the default stays" if keep_default else "the best trial wins")
        if keep_default:
            best, model = base_trial, kept["default"]
    best_cfg = with_params(base, best.params)
    result = SearchResult(dict(best.params), float(best.value), best.user_attrs.get("epochs"), rows,
                          as_spec(best_cfg), model, metric, time.perf_counter() - t0, extra)
    if base.get("fold_in_lambda") == "auto" and result.model is not None and result.model.folds_in:
        # the winner's own model gets its lambda on validation; the spec keeps "auto", so a
        # refit chooses the refit model's own (train/tune.py choose_fold_in_by_agreement)
        lam, _ = choose_fold_in_lambda(result.model, val_sets["val_seen"], val_sets["val_target"])
        result.extra["fold_in_lambda"] = float(lam)
    log.info("search: %d trials in %.1f s, best %s %.4f with %s%s", len(rows), result.seconds, metric,
             result.best_value, result.best_params,
             f", {result.best_epochs} epochs" if result.best_epochs else "")
    return result


def _defaults(base: dict, space: dict) -> dict | None:
    """The spec's own values of the space's parameters, when every one is set and inside the
    space (the config as given, tried first); else None."""
    out = {}
    for name, p in space.items():
        d = base
        for key in name.split("."):
            if not isinstance(d, dict) or key not in d:
                return None
            d = d[key]
        if p["type"] == "categorical":
            if d not in p["choices"]:
                return None
        elif not isinstance(d, (int, float)) or isinstance(d, bool) or not p["low"] <= d <= p["high"]:
            return None
        out[name] = d
    return out or None


def refit_data(prep):
    """The prepared data with the validation part merged into train and no validation part
    left: the data the final model is fitted on after selection (ratings follow their pairs)."""
    train = np.concatenate([prep.train, prep.valid])
    ratings = prep.train_ratings
    if ratings is not None:
        if prep.valid_ratings is None and len(prep.valid):
            raise ValueError("refit: the train part has ratings but the validation part has none")
        ratings = np.concatenate([ratings, prep.valid_ratings if prep.valid_ratings is not None
                                  else np.zeros(0, np.float32)])
    times = None                  # event times follow their pairs (sequence order)
    if prep.train_times is not None and prep.valid_times is not None:
        times = np.concatenate([prep.train_times, prep.valid_times])
    return dataclasses.replace(prep, train=train, valid=np.zeros((0, 2), dtype=np.int64), train_ratings=ratings,
                               valid_ratings=None, valid_carved=False, train_times=times, valid_times=None,
                               report={**prep.report, "refit_n_train": int(len(train))})


def refit_context(ctx, epochs: int | None):
    """The fit context of a refit: no callback that watches validation (there is none), the
    trainer fixed at the selected number of epochs for a learned model."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    callbacks = [c for c in ctx.callbacks if not getattr(c, "monitor", None) and not isinstance(c, ModelCheckpoint)]
    trainer = ctx.trainer
    if trainer is not None:       # no checkpoint of the refit (it has no validation to pick one by)
        trainer = functools.partial(trainer, enable_checkpointing=False)
        if epochs is not None:
            trainer = functools.partial(trainer, max_epochs=int(epochs), min_epochs=int(epochs))
    return dataclasses.replace(ctx, callbacks=callbacks, trainer=trainer,
                               max_epochs=int(epochs) if epochs is not None else ctx.max_epochs)


def _trial_callbacks(spec, metric: str, patience: int) -> list:
    if not spec.trains:
        return []
    from lightning.pytorch.callbacks import EarlyStopping
    return [EarlyStopping(monitor=metric, mode="max", patience=patience)]


def _quiet(trainer):
    """A trial's trainer: no checkpoints, no progress bar, no model summary."""
    if trainer is None:
        return None
    return functools.partial(trainer, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)


class EpochCurve(Callback):
    """Records the validation metric after every epoch (and reports it to an Optuna trial, which
    may prune it): best, best_epoch (1-based) and values."""

    def __init__(self, metric: str, trial=None):
        self.metric, self.trial = metric, trial
        self.values: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        v = float(trainer.callback_metrics[self.metric])
        self.values.append(v)
        if self.trial is not None:
            import optuna
            self.trial.report(v, len(self.values))
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"epoch {len(self.values)}: {self.metric} {v:.4f}")

    @property
    def best(self) -> float:
        return max(self.values)

    @property
    def best_epoch(self) -> int:
        return int(np.argmax(self.values)) + 1


@dataclass
class Choice:
    """What select_and_fit chose and fitted: the final model, its metrics (the test loop's,
    search/*, refit/*), the best validation value, info (what the export records: model,
    search, refit), the SearchResult (or None), and the data the model was fitted on (prep and
    its eval_sets: train + validation after a refit)."""
    model: Any
    metrics: dict
    best: float
    info: dict
    result: SearchResult | None
    prep: Any
    sets: dict


def refit_wanted(refit, prep) -> bool:
    """data.refit: true | false | auto (on when validation was carved out of a train file)."""
    if isinstance(refit, str):
        if refit.lower() == "auto":
            return bool(prep.valid_carved) and len(prep.valid) > 0
        if refit.lower() in ("true", "false"):
            return refit.lower() == "true"
        raise ValueError(f"data.refit={refit!r} is not one of auto, true, false")
    return bool(refit) and len(prep.valid) > 0


def select_and_fit(spec, prep, sets: dict, ctx, search_cfg: dict | None = None, refit="auto", test: bool = True):
    """The whole model choice of a run: an optional search on validation (search_cfg: trials,
    minutes, sampler, jobs, patience, prune), then the final fit: on train (no refit) or on
    train + validation (refit; a learned model for the epochs of its best validation value).
    Returns a Choice. test=False: no test loop (a model fitted for use, recsys.fit)."""
    search_cfg = dict(search_cfg or {})
    spec = spec.for_data(prep)          # settings measured on the validation part, for every fit
    result = None
    info: dict = {}
    if search_cfg.get("trials") or search_cfg.get("minutes"):
        space = search_cfg.get("space", getattr(spec, "search_space", None))
        result = search(spec, space, prep, sets, ctx,
                        trials=search_cfg.get("trials"), minutes=search_cfg.get("minutes"),
                        sampler=search_cfg.get("sampler", "tpe"), jobs=int(search_cfg.get("jobs", 1)),
                        patience=int(search_cfg.get("patience", 3)), prune=bool(search_cfg.get("prune", True)),
                        guard=search_cfg.get("guard", 0.05))
        spec = result.spec
        info["search"] = {"metric": result.metric, "best_value": result.best_value, "params": result.best_params,
                          "epochs": result.best_epochs, "trials": len(result.trials),
                          "seconds": round(result.seconds, 2), **result.extra}
    do_refit = refit_wanted(refit, prep)
    metrics: dict = {}
    final, final_sets = prep, sets
    if not do_refit:
        if result is not None and not spec.trains:     # the winner is already fitted on train
            model, best = result.model, result.best_value
        else:
            model, metrics, best = spec.fit(prep, sets, ctx, test=test)
            if result is not None:
                best = result.best_value
    else:
        epochs = result.best_epochs if result is not None else None
        best = result.best_value if result is not None else float("nan")
        if result is None:                              # a plain run: validate first, then refit
            curve = EpochCurve(ctx.optimized_metric)
            _, _, best = spec.fit(prep, sets, dataclasses.replace(ctx, callbacks=ctx.callbacks + [curve]),
                                  test=False)
            epochs = curve.best_epoch if curve.values else None
            # fold_in_lambda "auto" stays: the refit chooses its own (train/tune.py), the first
            # fit's value belongs to the first fit's embeddings
        final = refit_data(prep)
        final_sets = eval_sets(final)
        model, metrics, _ = spec.fit(final, final_sets, refit_context(ctx, epochs), test=test)
        info["refit"] = {"n_train": int(len(final.train)), "n_valid_merged": int(len(prep.valid)),
                         "epochs": epochs}
        metrics.update({"refit/n_train": len(final.train), **({"refit/epochs": epochs} if epochs else {})})
    info["model"] = spec.to_dict()
    if result is not None:
        metrics.update({"search/best_value": result.best_value, "search/trials": len(result.trials),
                        "search/seconds": result.seconds,
                        **{f"search/params.{k}": v for k, v in result.best_params.items()}})
    return Choice(model, metrics, best, info, result, final, final_sets)


def write_trials(path: str, result: SearchResult) -> None:
    """The trials as a CSV table (one row per trial: state, value, seconds, epochs, params)."""
    import pandas as pd
    pd.DataFrame(result.trials).to_csv(path, index=False)
