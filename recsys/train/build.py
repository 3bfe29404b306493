"""Turning prepared data into the tensors a Scorer and the evaluation need."""
from __future__ import annotations

import logging

import numpy as np
import torch

from recsys.data.prepare import Prepared
from recsys.eval.beyond import unit_rows
from recsys.models.blend import Blend
from recsys.models.coldstart import fill_matrix
from recsys.models.learned import Scorer, ScorerConfig, VARIANT_CLASSES
from recsys.models.memory import MemoryConfig
from recsys.models.registry import model_class
from recsys.models.sequence import Sequence, SequenceConfig
from recsys.sparse.csr import csr, csr_from_pairs
from recsys.train.tune import sample_users

log = logging.getLogger("recsys.train")


def scorer_buffers(prep: Prepared, cold_k: int = 0, cold_scale: float = 1.0) -> dict[str, torch.Tensor]:
    hist_indptr, hist_indices = csr(prep.train, prep.n_users)
    return {**fill_buffers(prep, cold_k, cold_scale),
        "tok_indptr": torch.from_numpy(prep.bags.indptr),
        "tok_indices": torch.from_numpy(prep.bags.indices),
        "tok_weights": torch.from_numpy(prep.bags.weights),
        "hist_indptr": hist_indptr,
        "hist_indices": hist_indices,
        "item_warm": torch.from_numpy(prep.item_warm()),
    }


def fill_buffers(prep: Prepared, cold_k: int = 0, cold_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The cold items' fill matrix (coldstart.py) as buffers: each cold item's cold_k most
    content-similar warm items."""
    indptr, indices, weights = fill_matrix(torch.from_numpy(prep.bags.indptr), torch.from_numpy(prep.bags.indices),
                                           torch.from_numpy(prep.bags.weights), len(prep.tokens),
                                           torch.from_numpy(prep.item_warm()), cold_k, cold_scale)
    return {"fill_indptr": indptr, "fill_indices": indices, "fill_weights": weights}


def build_scorer(prep: Prepared, **model) -> Scorer:
    """model: ScorerConfig fields other than the sizes (variant, dim, alpha, ...). With the
    pretrained tokenizer, the content-token table starts from the model's token embeddings
    (frozen unless the tokenizer config says freeze: false)."""
    buffers = {}
    part = VARIANT_CLASSES[model.get("variant", "hybrid")]
    if prep.tokenizer.kind == "pretrained" and part.pools_tokens:
        pre = torch.from_numpy(prep.tokenizer.embedding_rows(prep.tokens.ids))          # (T, d_pre)
        buffers["token_pre"] = pre
        model = {**model, "token_pre_dim": int(pre.shape[1]), "token_pre_train": not prep.tokenizer.freeze}
    cfg = ScorerConfig(n_users=prep.n_users, n_items=prep.n_items, n_tokens=len(prep.tokens), **model)
    buffers.update(scorer_buffers(prep, cfg.cold_k if part.fills_cold else 0, cfg.cold_scale))
    return Scorer(cfg, buffers)


def cold_rate(prep: Prepared) -> float:
    """How many times as often, per item, the validation events go to items with no training
    event as to the others: (cold targets / warm targets) x (warm items / cold items); the
    maximum-likelihood boost of the sequence model's cold mixture (models/sequence.py). 0 when
    there is no validation part, no cold or no warm item, or no validation event on a warm one."""
    warm = prep.item_warm()
    C, W = int((~warm).sum()), int(warm.sum())
    items = prep.valid[:, 1]
    n_cold = int((~warm[items]).sum())
    n_warm = len(items) - n_cold
    rate = 0.0 if C == 0 or W == 0 or n_warm == 0 else n_cold / n_warm * W / C
    log.info("cold items: %d of %d validation events on %d items with no training event, against %d on %d "
             "others: %.3g times the rate per item", n_cold, len(items), C, n_warm, W, rate)
    return rate


def resolve_cold_boost(params: dict, prep: Prepared) -> dict:
    """The sequence model's parameters with cold_boost "auto" (the default) replaced by
    cold_rate(prep); the same dict when a number is given."""
    if params.get("cold_boost", SequenceConfig.cold_boost) != "auto":
        return params
    return {**params, "cold_boost": cold_rate(prep)}


def build_sequence(prep: Prepared, **model):
    """The sequence model (models/sequence.py) on prepared data: SequenceConfig fields other
    than the sizes; its buffers are the token bags, each user's training items in time order
    (Prepared.sequences), their bag and the warm items. cold_boost "auto" becomes cold_rate(prep)
    (a refit, which has no validation part, is given the first fit's number: SequenceSpec.for_data)."""
    model = resolve_cold_boost(model, prep)
    cfg = SequenceConfig(n_users=prep.n_users, n_items=prep.n_items, n_tokens=len(prep.tokens), **model)
    seq_indptr, seq_indices = prep.sequences(("train",))
    hist_indptr, hist_indices = csr(prep.train, prep.n_users)
    return Sequence(cfg, {
        "tok_indptr": torch.from_numpy(prep.bags.indptr), "tok_indices": torch.from_numpy(prep.bags.indices),
        "tok_weights": torch.from_numpy(prep.bags.weights),
        "seq_indptr": seq_indptr, "seq_indices": seq_indices,
        "hist_indptr": hist_indptr, "hist_indices": hist_indices,
        "item_warm": torch.from_numpy(prep.item_warm()),
        **fill_buffers(prep, cfg.cold_k, cfg.cold_scale),
    })


def eval_sets(prep: Prepared, val_users: int | None = None, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CSR targets and seen-item masks: validation ranks with train masked; test ranks with
    train + valid masked (both were available before the test period).
    val_users: validation (each epoch's early-stopping value, model selection, the fold-in
    choice) ranks a seeded uniform sample of at most this many of the users with validation
    targets (tune.sample_users; None: all). The test report always ranks every test user."""
    if val_users is not None and int(val_users) < 1:
        raise ValueError(f"val_users={val_users} must be >= 1 (or null: every validation user)")
    val = csr(prep.valid, prep.n_users)
    return {
        "val_target": val if val_users is None else sample_users(val, int(val_users), seed),
        "val_seen": csr(prep.train, prep.n_users),
        "test_target": csr(prep.test, prep.n_users),
        # in time order (the export's seen items: a served user's live history continues it)
        "test_seen": prep.sequences(("train", "valid")),
    }


def build_memory(prep: Prepared, model: dict, device: str = "cpu"):
    """Fit a memory-based / closed-form model (itemknn, userknn, content_knn, ease, popularity)
    or a `blend` of two of them, from plain config values."""
    model = dict(model)
    cls = model_class(model.get("kind"))
    if cls is Blend:
        first = build_memory(prep, model["first"], device)
        second = build_memory(prep, model["second"], device)
        return Blend(first, second, model.get("alpha", 0.5), model.get("norm", "zscore"))
    hist_indptr, hist_indices, values = _csr_with_values(prep)
    cfg = MemoryConfig(n_users=prep.n_users, n_items=prep.n_items, **model)
    fill = None
    if cfg.cold_k > 0 and cls.fills_cold:
        fill = tuple(fill_buffers(prep, cfg.cold_k, cfg.cold_scale).values())
    return cls.fit(cfg, hist_indptr, hist_indices, values,
                   torch.from_numpy(prep.bags.indptr), torch.from_numpy(prep.bags.indices),
                   torch.from_numpy(prep.bags.weights), len(prep.tokens), device=device, fill=fill)


def _csr_with_values(prep: Prepared):
    indptr, indices, vals = csr_from_pairs(prep.train[:, 0], prep.train[:, 1], prep.n_users, prep.train_ratings)
    return (torch.from_numpy(indptr), torch.from_numpy(indices),
            None if vals is None else torch.from_numpy(np.asarray(vals, dtype=np.float32)))


def report_context(prep: Prepared, history_buckets: list[int] | None = (5, 20), head_share: float = 0.8) -> dict:
    """The evaluate_report() extras for a prepared dataset: training-history lengths and their
    buckets, cold items (no training interaction), and the beyond-accuracy inputs (training
    popularity, unit TF-IDF item vectors)."""
    users = torch.from_numpy(prep.train[:, 0])
    items = torch.from_numpy(prep.train[:, 1])
    return {
        "hist_len": torch.bincount(users, minlength=prep.n_users),
        "buckets": list(history_buckets) if history_buckets else None,
        "item_cold": torch.from_numpy(~prep.item_warm()),
        "beyond": {"train_user_counts": torch.bincount(items, minlength=prep.n_items), "n_users": prep.n_users,
                   "unit_vectors": unit_rows(torch.from_numpy(prep.bags.indptr), torch.from_numpy(prep.bags.indices),
                                             torch.from_numpy(prep.bags.weights), len(prep.tokens)),
                   "head_share": float(head_share)},
    }


def new_user_sets(prep: Prepared) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """CSR given histories and targets of the new-user protocol's users (None without it)."""
    if prep.new_users is None:
        return None
    n = len(prep.new_users)
    return {"given": csr(prep.new_given, n), "target": csr(prep.new_target, n)}
