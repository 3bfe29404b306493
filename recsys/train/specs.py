"""Model specs: what a config's `model:` section instantiates to (Hydra `_target_`), and what
`recsys.fit(model=...)` builds from a kind name. A spec knows how to fit its model on prepared
data (data/prepare.Prepared):

    Memory(kind="ease", lam=200.0)                 closed-form / memory-based: one fit, no epochs
    Learned(variant="hybrid", dim=64, optim={...}) the token-embedding Scorer, trained with Lightning
    Blend(first=spec, second=spec, alpha, norm)    each part fitted, then blended

`spec.fit(prep, sets, ctx)` -> (model, metrics, best validation value). `ctx` (FitContext) holds
what comes from the surroundings: the Lightning trainer factory, callbacks, loggers, K values,
the evaluation chunk, the device. Specs are plain values: `spec.to_dict()` is the config.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from recsys.eval.evaluation import evaluate
from recsys.models.blend import Blend as BlendModel
from recsys.models.learned import ScorerConfig
from recsys.models.memory import MemoryConfig
from recsys.models.registry import model_class
from recsys.models.sequence import SequenceConfig
from recsys.train.build import build_memory, build_scorer, build_sequence, resolve_cold_boost
from recsys.train.tune import choose_fold_in_by_agreement, choose_fold_in_lambda


log = logging.getLogger(__name__)


@dataclass
class FitContext:
    """trainer: callbacks, logger -> lightning.Trainer (learned models only; default: a CPU/GPU
    trainer of `max_epochs` with no logger and no checkpoints). device: where closed-form
    models fit ("cpu" or "cuda")."""
    trainer: Callable[..., Any] | None = None
    callbacks: list = field(default_factory=list)
    loggers: list = field(default_factory=list)
    ks: tuple[int, ...] = (10, 20)
    eval_chunk: int = 1024
    seed: int = 2026
    ckpt_path: str | None = None
    device: str = "cpu"
    optimized_metric: str = "val/ndcg@10"
    max_epochs: int = 30


class Memory:
    """A memory-based or closed-form model: kind (itemknn, userknn, content_knn, ease,
    popularity) and its MemoryConfig fields (models/memory.py)."""

    # where a kind's configs/model/<kind>.yaml differs from MemoryConfig's shared defaults:
    # recsys.fit(model=kind) fits what python train.py model=kind fits (tests/test_fit_defaults.py)
    KIND_DEFAULTS = {"userknn": {"k": 50}, "ease": {"block_size": 1024}}

    def __init__(self, kind: str, search_space: dict | None = None, **params):
        cls = model_class(kind)
        self.search_space = search_space
        params = {**self.KIND_DEFAULTS.get(kind, {}), **params}
        unknown = sorted(set(params) - set(getattr(cls, "fields", MemoryConfig.__dataclass_fields__)))
        if unknown or not hasattr(cls, "tables"):
            raise ValueError(f"model kind {kind!r} takes no parameter(s) {unknown}" if unknown else
                             f"model kind {kind!r} is not a memory-based model")
        MemoryConfig(kind=kind, n_users=1, n_items=1, **params)       # checks the values now
        self.kind, self.params = kind, dict(params)

    trains = False                  # fitted in one pass, no epochs
    epoch_curve = False             # no validation curve over epochs
    valid_split = "random"          # recsys.fit's validation carve-out (data.valid_split)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params}

    def resolved(self) -> dict:
        """Every MemoryConfig value of the fit (the shared config holds every kind's fields)."""
        cfg = dataclasses.asdict(MemoryConfig(kind=self.kind, n_users=1, n_items=1, **self.params))
        return {k: v for k, v in cfg.items() if k not in _SIZES}

    def effective_params(self) -> dict:
        """This kind's own parameters (the fields its model class reads), defaults included."""
        out = self.resolved()
        return {k: out[k] for k in model_class(self.kind).fields}

    def build(self, prep, device: str = "cpu"):
        return build_memory(prep, self.to_dict(), device=device)

    def fit(self, prep, sets, ctx: FitContext, test: bool = True):
        """(model, metrics, validation value); no test loop (the final report tests)."""
        return _fit_once(self, prep, sets, ctx)

    def for_data(self, prep) -> "Memory":
        """The spec with the settings measured on the data resolved (none here)."""
        return self


class Learned:
    """The learned token-embedding Scorer (models/learned/): ScorerConfig fields, the
    optimisation of the Lightning module (`optim`: loss, n_neg, lr, weight_decay, l2,
    batch_size, sparse) and the fold-in weight of users outside the model ("auto": chosen on
    validation, train/tune.py)."""

    def __init__(self, variant: str = "hybrid", optim: dict | None = None, fold_in_lambda: Any = "auto",
                 kind: str = "learned", search_space: dict | None = None, **params):
        _own_kind(kind, "learned")
        unknown = sorted(set(params) - set(ScorerConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"the learned model takes no parameter(s) {unknown}")
        self.variant, self.params, self.fold_in_lambda = variant, dict(params), fold_in_lambda
        self.search_space = search_space
        self.optim = dict(optim or {})
        if self.optim.get("solver") == "als" and (variant not in ("collaborative", "mf_tokens")
                                                  or params.get("item_bias", True)):
            raise ValueError(f"model.optim.solver=als trains the collaborative or mf_tokens variant without item "
                             f"bias (model=als, als_tokens), not variant={variant!r} with item_bias="
                             f"{params.get('item_bias', True)}")

    trains = True                   # Lightning epochs
    epoch_curve = True              # validated every epoch: model selection reads the curve's best
    valid_split = "random"
    # optim settings of the data loader (the rest are RecsysModule's keywords)
    LOADER = {"batch_size": 1024, "batching": "interactions", "user_run": 0}

    def to_dict(self) -> dict:
        return {"kind": "learned", "variant": self.variant, **self.params, "fold_in_lambda": self.fold_in_lambda,
                "optim": dict(self.optim)}

    def resolved(self) -> dict:
        optim = {k: v for k, v in self.optim.items() if k != "solver"}
        module, loader = _solver(self.optim.get("solver", "adam"))
        out = _trained(ScorerConfig(**_SIZES, variant=self.variant, **self.params), module,
                       self.LOADER if loader else {}, optim)
        out["optim"] = {"solver": self.optim.get("solver", "adam"), **out["optim"]}
        return {**out, "fold_in_lambda": self.fold_in_lambda}

    def _module(self, scorer, prep, sets, ctx: FitContext):
        """(the Lightning module of model.optim.solver, its training loader): adam (minibatches
        of interactions, train/module.py) or als (an ALS iteration an epoch, train/als.py)."""
        optim = dict(self.optim)
        module, batched = _solver(optim.pop("solver", "adam"))
        if not batched:
            from recsys.train.als import iteration_loader
            return module(scorer, sets, prep.train, ks=tuple(ctx.ks), **optim), iteration_loader()
        from recsys.train.module import train_loader
        batch_size, batching, user_run = (optim.pop(k, v) for k, v in self.LOADER.items())
        return (module(scorer, sets, ks=tuple(ctx.ks), **optim),
                train_loader(prep.train, batch_size, ctx.seed, batching, user_run))

    def effective_params(self) -> dict:
        return self.resolved()

    def for_data(self, prep) -> "Learned":
        """The spec with the settings measured on the data resolved (none here)."""
        return self

    def fit(self, prep, sets, ctx: FitContext, test: bool = True):
        """Train with Lightning; (scorer in eval mode, metrics, best validation value).
        test=False skips Lightning's test loop (a blend part: the blend is tested, not the part)."""
        from recsys.train.module import user_loader
        model = dict(self.params, variant=self.variant)
        if self.fold_in_lambda != "auto":
            model["fold_in_lambda"] = float(self.fold_in_lambda)
        scorer = build_scorer(prep, **model)
        module, loader = self._module(scorer, prep, sets, ctx)
        trainer = (ctx.trainer or _default_trainer(ctx))(callbacks=ctx.callbacks, logger=ctx.loggers or False)
        # weights_only: a checkpoint to resume from is read without unpickling code objects
        trainer.fit(module, loader, user_loader(sets["val_target"][0], ctx.eval_chunk), ckpt_path=ctx.ckpt_path,
                    weights_only=True)
        _load_best(module, ctx)
        if self.fold_in_lambda == "auto" and scorer.folds_in:   # MF fold-in of users outside the model
            if int(sets["val_target"][1].numel()):
                choose_fold_in_lambda(scorer, sets["val_seen"], sets["val_target"])
            else:              # a refit (no validation part): the lambda that reproduces the learned users
                choose_fold_in_by_agreement(scorer, sets["val_seen"], seed=ctx.seed)
        metrics, best = _after_fit(trainer, module, sets, ctx, test)
        if scorer.folds_in:
            metrics["fold_in/lambda"] = scorer.config.fold_in_lambda
        return scorer.cpu().eval(), metrics, best      # eval mode: Lightning leaves it training


class SequenceSpec:
    """The sequence model (models/sequence.py): SequenceConfig fields and the optimisation of
    its Lightning module (`optim`: loss full | sampled, n_neg, lr, weight_decay, batch_size
    in users), trained with Lightning like Learned."""

    def __init__(self, optim: dict | None = None, kind: str = "sequence", search_space: dict | None = None,
                 **params):
        _own_kind(kind, "sequence")
        unknown = sorted(set(params) - set(SequenceConfig.__dataclass_fields__) - {"n_users", "n_items", "n_tokens"})
        if unknown:
            raise ValueError(f"the sequence model takes no parameter(s) {unknown}")
        SequenceConfig(n_users=1, n_items=1, n_tokens=1, **params)       # checks the values now
        self.params, self.optim, self.search_space = dict(params), dict(optim or {}), search_space

    trains = True                   # Lightning epochs
    epoch_curve = True              # validated every epoch: model selection reads the curve's best
    valid_split = "last"            # recsys.fit validates it on each user's last event
    batch_size = 128                # users per batch (optim.batch_size) ...
    batch_events = 0                # ... unless > 0: padded positions per batch (optim.batch_events)

    def to_dict(self) -> dict:
        return {"kind": "sequence", **self.params, "optim": dict(self.optim)}

    def resolved(self) -> dict:
        from recsys.train.sequence_module import SequenceModule
        return _trained(SequenceConfig(**_SIZES, **self.params), SequenceModule,
                        {"batch_size": self.batch_size, "batch_events": self.batch_events}, self.optim)

    def effective_params(self) -> dict:
        return self.resolved()

    def for_data(self, prep) -> "SequenceSpec":
        """cold_boost "auto" resolved on prep's validation part (build.cold_rate), before the
        first fit, so that a refit, which has no validation part, is given the same number."""
        params = resolve_cold_boost(self.params, prep)
        if params is self.params:
            return self
        return SequenceSpec(optim=self.optim, search_space=self.search_space, **params)

    def fit(self, prep, sets, ctx: FitContext, test: bool = True):
        """Train with Lightning; (model in eval mode, metrics, best validation value)."""
        from recsys.train.module import user_loader
        from recsys.train.sequence_module import SequenceModule, sequence_loader
        optim = dict(self.optim)
        batch_size = optim.pop("batch_size", self.batch_size)
        batch_events = optim.pop("batch_events", self.batch_events)
        model = build_sequence(prep, **self.params)
        module = SequenceModule(model, sets, ks=tuple(ctx.ks), **optim)
        loader = sequence_loader(model.seq_indptr, batch_size, ctx.seed, model.config.max_len, batch_events)
        trainer = (ctx.trainer or _default_trainer(ctx))(callbacks=ctx.callbacks, logger=ctx.loggers or False)
        trainer.fit(module, loader,
                    user_loader(sets["val_target"][0], ctx.eval_chunk), ckpt_path=ctx.ckpt_path, weights_only=True)
        _load_best(module, ctx)
        metrics, best = _after_fit(trainer, module, sets, ctx, test)
        return model.cache_users().cpu(), metrics, best      # known users ranked from cached states


def _after_fit(trainer, module, sets, ctx: FitContext, test: bool) -> tuple[dict, float]:
    """What every Lightning fit ends with: (metrics, best validation value)."""
    from recsys.train.module import user_loader
    # Lightning's test loop only under DDP, where it is the sharded check of the final
    # report's figures (loop/*); in one process the report's own pass is the only one (at
    # 1M users each pass over the test users takes minutes)
    test = test and trainer.world_size > 1
    if test:
        trainer.test(module, user_loader(sets["test_target"][0], ctx.eval_chunk), verbose=False)
    best = _best_value(ctx, trainer)
    metrics = dict(module.last_test_metrics) if test else {}
    metrics["trainer/world_size"] = trainer.world_size
    # the optimizer state (two moments per parameter) is of no use after the fit, and
    # Lightning's objects keep the trainer reachable after this returns: drop it here
    trainer.strategy.optimizers = []
    # the test loop's own figures (sharded over processes, then summed): the final report
    # recomputes test/* in one pass; the two must agree (tests/test_ddp.py)
    metrics.update({f"loop/{k}": v for k, v in metrics.items() if k.endswith(("ndcg@10", "recall@20"))})
    return metrics, best


def _load_best(module, ctx: FitContext) -> None:
    """The best checkpoint's weights (when a ModelCheckpoint callback kept one) into module."""
    import lightning as L
    best_ckpt = next((c.best_model_path for c in ctx.callbacks      # the monitored one (not last.ckpt's)
                      if isinstance(c, L.pytorch.callbacks.ModelCheckpoint) and c.monitor and c.best_model_path), None)
    if best_ckpt:  # weights only: checkpoints hold plain tensors and primitives
        state = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=True)


def _best_value(ctx: FitContext, trainer) -> float:
    best = next((c.best_model_score for c in ctx.callbacks
                 if getattr(c, "monitor", None) and getattr(c, "best_model_score", None) is not None), None)
    return float(best) if best is not None else float(trainer.callback_metrics.get(ctx.optimized_metric, float("nan")))


class Blend:
    """alpha * n_u(first) + (1 - alpha) * n_u(second) (models/blend.py) of two specs."""

    def __init__(self, first, second, alpha: float = 0.5, norm: str = "zscore", kind: str = "blend",
                 search_space: dict | None = None):
        self.first, self.second = as_spec(first), as_spec(second)
        self.alpha, self.norm = float(alpha), norm
        self.search_space = search_space

    epoch_curve = False             # a learned part's curve is not the blend's: validated once fitted

    @property
    def valid_split(self) -> str:
        """'last' when a part predicts the next item (a sequence model), else 'random'."""
        return "last" if "last" in (self.first.valid_split, self.second.valid_split) else "random"

    @property
    def trains(self) -> bool:
        return self.first.trains or self.second.trains

    def to_dict(self) -> dict:
        return {"kind": "blend", "alpha": self.alpha, "norm": self.norm,
                "first": self.first.to_dict(), "second": self.second.to_dict()}

    def resolved(self) -> dict:
        return {"kind": "blend", "alpha": self.alpha, "norm": self.norm,
                "first": self.first.resolved(), "second": self.second.resolved()}

    def effective_params(self) -> dict:
        return self.resolved()

    def for_data(self, prep) -> "Blend":
        """Both parts' settings measured on the data resolved."""
        first, second = self.first.for_data(prep), self.second.for_data(prep)
        if first is self.first and second is self.second:
            return self
        return Blend(first, second, self.alpha, self.norm, search_space=self.search_space)

    def build(self, prep, device: str = "cpu"):
        """Both parts fitted without epochs (neither may be learned), blended."""
        return BlendModel(self.first.build(prep, device), self.second.build(prep, device), self.alpha, self.norm)

    def fit(self, prep, sets, ctx: FitContext, test: bool = True):
        """A learned part is trained with Lightning (early stopping on its own validation
        metric; the best value reported is that part's), the other fitted without epochs, then
        blended; without a learned part, the blend is fitted and validated once."""
        if not self.trains:
            return _fit_once(self, prep, sets, ctx)
        parts, best = [], float("nan")
        for spec in (self.first, self.second):
            if spec.trains:
                m, _, best = spec.fit(prep, sets, ctx, test=False)
            else:
                m = spec.build(prep)
            parts.append(m)
        return BlendModel(parts[0], parts[1], self.alpha, self.norm), {}, best


def _fit_once(spec, prep, sets, ctx: FitContext):
    """Fit a model that needs no epochs on ctx.device, validate it, log both to every logger."""
    t0 = time.perf_counter()
    model = spec.build(prep, ctx.device)
    fit_s = time.perf_counter() - t0
    on = {k: tuple(t.to(ctx.device) for t in v) for k, v in sets.items()}
    val, _ = evaluate(model, on["val_target"], on["val_seen"], list(ctx.ks), ctx.eval_chunk, "val/")
    val.pop("val/users", None)
    for lg in ctx.loggers:
        lg.log_metrics({**val, "fit/seconds": fit_s}, step=0)
    log.info("fitted %s in %.2f s on %s", spec.to_dict()["kind"], fit_s, ctx.device)
    return model.cpu(), {"fit/seconds": fit_s}, val.get(ctx.optimized_metric, float("nan"))


# kind names that are learned models with preset values (configs/model/<name>.yaml's): the
# variants, and matrix factorisation trained by ALS
LEARNED_PRESETS = {"collaborative": {"variant": "collaborative"}, "content": {"variant": "content"},
                   "hybrid": {"variant": "hybrid"},
                   "mf_tokens": {"variant": "mf_tokens"},
                   "als": {"variant": "collaborative", "dim": 32, "item_bias": False, "init_std": 0.01,
                           "optim": {"solver": "als"}},
                   "als_tokens": {"variant": "mf_tokens", "dim": 32, "item_bias": False, "init_std": 0.01,
                                  "optim": {"solver": "als"}}}
_SIZES = {"n_users": 1, "n_items": 1, "n_tokens": 1}


def resolved(spec) -> dict:
    """Every value a fit of `spec` uses, defaults included (spec.resolved()): the estimators'
    get_params and the test that the config files hold the code's defaults
    (tests/test_fit_defaults.py) read it."""
    return spec.resolved()


def _own_kind(kind: str, own: str) -> None:
    """A spec built from a config is of the config's kind (a model.kind= override that
    contradicts the config file's _target_ is refused, one line)."""
    if kind != own:
        raise ValueError(f"model.kind={kind!r} does not match this config's model ({own})")


def _solver(name: str):
    """(the Lightning module class of model.optim.solver, whether it trains on minibatches)."""
    if name == "adam":
        from recsys.train.module import RecsysModule
        return RecsysModule, True
    if name == "als":
        from recsys.train.als import ALSModule
        return ALSModule, False
    raise ValueError(f"model.optim.solver={name!r} must be 'adam' (minibatches) or 'als' (alternating least squares)")


def _trained(cfg, module, optim: dict, spec_optim: dict) -> dict:
    """A trained spec's resolved values: its config's fields but the sizes (the data's), and
    `optim`, the Lightning module's defaults under the spec's own settings."""
    optim = {**optim, **{k: p.default for k, p in inspect.signature(module.__init__).parameters.items()
                         if p.default is not inspect.Parameter.empty and k != "ks"}}
    return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in _SIZES},
            "optim": {**optim, **spec_optim}}


def as_spec(model) -> Memory | Learned | SequenceSpec | Blend:
    """A spec from a spec, a kind name ("ease", "itemknn", ..., "hybrid" / "collaborative" /
    "content" for the learned variants, "learned") or a config dict with "kind"."""
    if isinstance(model, (Memory, Learned, SequenceSpec, Blend)):
        return model
    if isinstance(model, str):
        model = {"kind": model}
    if not isinstance(model, dict):
        raise TypeError(f"model must be a kind name, a dict with 'kind' or a spec, got {type(model).__name__}")
    model = {k: v for k, v in model.items() if k != "_target_"}
    kind = model.pop("kind", "learned")
    if kind in LEARNED_PRESETS:
        preset = LEARNED_PRESETS[kind]
        return Learned(**{**preset, **model, "optim": {**preset.get("optim", {}), **(model.get("optim") or {})}})
    return SPECS.get(kind, functools.partial(Memory, kind))(**model)


SPECS = {"learned": Learned, "sequence": SequenceSpec, "blend": Blend}    # the other kinds: Memory


def _default_trainer(ctx: FitContext):
    import lightning as L

    def make(callbacks, logger):
        return L.Trainer(max_epochs=ctx.max_epochs, accelerator="cuda" if ctx.device == "cuda" else "cpu",
                         devices=1, logger=logger, callbacks=callbacks, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False)
    return make
