"""Fit any recsys model in-process, from a pandas DataFrame (or a scipy sparse matrix), with no
Hydra and no files written; the result is the same `Recommender` that `from_pretrained` loads.

    import recsys
    rec = recsys.fit(ratings, items=movies, model="ease", lam=200.0)
    ids, scores = rec.recommend(["u1", "u2"], k=10)
    rec.save_pretrained("my-model")                   # an export like train.py's

    rec = recsys.fit(ratings, items=movies, model="hybrid", max_epochs=10)   # learned (Lightning)
    rec = recsys.fit(csr_matrix)                      # rows users, columns items, ids = indices
    rec = recsys.fit(ratings, model="ease", search={"trials": 20, "space": {"lam": {"low": 10, "high": 5000, "log": True}}})

`model`: a kind ("itemknn", "userknn", "content_knn", "ease", "popularity", "hybrid",
"collaborative", "content", "sequence": pass time_col so that histories are in time order), a dict as in configs/model/*.yaml (e.g. a blend), or a spec
(train/specs.py); `**params` are the model's fields (lam=200.0, k=50, dim=32, ...).
All interactions train the final model: a learned model (or a search) first holds out a per-user
`valid_ratio` (default 0.1) for early stopping, its fold-in weight and the search, then is refit
on everything (a learned model for the epochs of its best validation value; refit=False keeps
the model fitted without the held-out part). `search`: the settings of train.py's `search:`
(trials, minutes, sampler, ...) plus `space` (as `search_space:` in configs/model/*.yaml;
recsys/train/search.py). train.py fits through the same specs and the same selection.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from recsys.data.prepare import prepare_frames
from recsys.serve.recommender import Recommender
from recsys.train.build import eval_sets
from recsys.train.specs import FitContext, as_spec



def _frame(interactions, user_col: str, item_col: str, rating_col: str | None):
    """(frame, user_col, item_col, rating_col, shape) from a DataFrame (shape None), or from a
    scipy sparse matrix (users x items: ids are the row and column indices, the values ratings;
    every row and column is a user and an item, empty or not)."""
    import pandas as pd
    if isinstance(interactions, pd.DataFrame):
        return interactions, user_col, item_col, rating_col, None
    try:
        import scipy.sparse as sp
    except ImportError:      # scipy is optional
        sp = None
    if sp is not None and sp.issparse(interactions):
        m = sp.coo_matrix(interactions)
        keep = m.data != 0
        return (pd.DataFrame({"user": m.row[keep].astype(np.int64), "item": m.col[keep].astype(np.int64),
                              "rating": m.data[keep]}), "user", "item", "rating", tuple(int(x) for x in m.shape))
    raise TypeError(f"interactions must be a pandas DataFrame or a scipy sparse matrix, got "
                    f"{type(interactions).__name__}")


def fit(interactions, items=None, model: Any = "ease", *, user_col: str = "user", item_col: str = "item",
        rating_col: str | None = None, time_col: str | None = None, items_item_col: str | None = None,
        text_cols: list[str] | None = None, min_rating: float | None = None, tokens: dict | None = None,
        valid_ratio: float | None = None, seed: int = 2026, device: str = "cpu", max_epochs: int = 30,
        search: dict | None = None, refit: bool = True, val_users: int | None = 50_000,
        on_epoch: Callable[[int, dict], Any] | None = None, **params):
    """A fitted `Recommender` (serve/recommender.py). interactions: one row per (user, item)
    interaction (columns user_col, item_col, optional rating_col / time_col), or a sparse users x
    items matrix; items: an optional item table (items_item_col, default item_col, and text
    columns: all others unless text_cols), whose text feeds content models, cold items and
    items added later. Ids follow the package's id rule (recsys/data/ids.py). val_users:
    validation (early stopping, search) ranks a seeded sample of at most this many users
    (None: all), as train.py's val_users. on_epoch: called as on_epoch(epoch, metrics) after
    each training epoch of a learned model (a search's trials included), metrics a dict of
    floats (train/loss_epoch, val/ndcg@10, ...): a progress bar, a log, a plot."""
    if params:
        if not isinstance(model, str):
            raise TypeError("pass model parameters either in the model dict or as keywords with a kind name")
        model = {"kind": model, **params}
    spec = as_spec(model)
    if spec.trains and max_epochs < 1:
        raise ValueError(f"max_epochs={max_epochs} trains nothing: a learned model needs at least one epoch")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} must be 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device on this machine")
    frame, ucol, icol, rcol, shape = _frame(interactions, user_col, item_col, rating_col)
    prep = prepare_frames(frame, items, user_col=ucol, item_col=icol, rating_col=rcol, time_col=time_col,
                          items_item_col=items_item_col, text_cols=text_cols, min_rating=min_rating,
                          valid_ratio=(0.1 if spec.trains or search else 0.0) if valid_ratio is None else valid_ratio,
                          seed=seed, tokens=tokens,
                          # a next-item model validates on each user's last event (with times)
                          valid_split=spec.valid_split if time_col else "random",
                          shape=shape)
    sets = eval_sets(prep, val_users, seed)
    callbacks = []
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be a function (epoch, metrics), got {type(on_epoch).__name__}")
    if spec.trains or search:        # Lightning only for what trains or searches: a memory model fits without it
        import lightning as L
        L.seed_everything(seed, workers=True, verbose=False)
        if on_epoch is not None:
            callbacks.append(_EpochReport(on_epoch))
        if spec.trains and len(prep.valid):
            callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor=f"val/ndcg@{min(10, prep.n_items)}",
                                                               mode="max", patience=3))
    else:
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
    k = min(10, prep.n_items)          # validation ranks the top 10 (the whole catalog if smaller)
    ctx = FitContext(callbacks=callbacks, seed=seed, device=device, max_epochs=max_epochs, ks=(k,),
                     optimized_metric=f"val/ndcg@{k}")
    if search is not None and not isinstance(search, dict):
        raise TypeError(f"search must be a dict of search settings (trials, minutes, space, ...), got {type(search).__name__}")
    if search and not len(prep.valid):
        raise ValueError(f"search needs a validation part: valid_ratio={valid_ratio} left none")
    if not search and not spec.trains:
        m, info = spec.build(prep, device), {"model": spec.to_dict()}
    else:                        # no test part: fitted for use
        from recsys.train.search import select_and_fit
        choice = select_and_fit(spec, prep, sets, ctx, search, refit=bool(refit), test=False)
        m, info = choice.model, choice.info
    seen = prep.sequences(("train", "valid"))            # in time order: a live history continues it
    return Recommender(m.cpu().eval(), prep.users, prep.items, prep.tokens, prep.tokenizer, seen,
                       torch.from_numpy(prep.bags.idf), prep.item_titles,
                       {"text_fields": prep.text_fields, "events_through": prep.events_through, **info},
                       prep.item_attributes)


def _EpochReport(on_epoch):
    """A Lightning callback calling on_epoch(epoch, metrics) after each training epoch (its
    validation included): metrics as plain floats, e.g. {"train/loss_epoch": ..., "val/ndcg@10": ...}."""
    import lightning as L

    class EpochReport(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            on_epoch(int(trainer.current_epoch), {k: float(v) for k, v in trainer.callback_metrics.items()
                                                  if getattr(v, "numel", lambda: 1)() == 1})
    return EpochReport()
