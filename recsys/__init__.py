"""recsys: users, items and content tokens as embedding tables; collaborative, content and
hybrid scores from one torch module. See README.md.

    import recsys
    rec = recsys.fit(ratings, items=movies, model="ease")            # in-process, no files
    rec = recsys.Recommender.from_pretrained("outputs/run/export")   # or a train.py export
    model = recsys.EASE(lam=200).fit(ratings)                        # estimators: unfitted until fit
    ids, scores = rec.recommend(["u1", "u2"], k=10)

`import recsys` loads the serving path only (torch, numpy, safetensors); `recsys.fit` brings in
the data preparation, and Lightning for the learned models, when it is called.
"""
import warnings

# torch warns on every sparse CSR tensor that the layout is beta and that invariant checks are
# off; recsys builds its CSR tensors from indices it has already checked (recsys/sparse,
# recsys/eval/ranking.py), so both are noise in every run's log. Only these two messages.
warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support is in beta state|invariant checks are implicitly disabled)")

from recsys.version import __version__  # noqa: E402

from recsys.models.learned import Scorer, ScorerConfig  # noqa: E402
from recsys.serve.recommender import Recommender  # noqa: E402


def fit(interactions, items=None, model="ease", **kwargs) -> Recommender:
    """Fit a model from a DataFrame or sparse matrix in-process: recsys/train/fit.py."""
    from recsys.train.fit import fit as _fit
    return _fit(interactions, items, model, **kwargs)


_ESTIMATORS = ("EASE", "LowRankEASE", "ItemKNN", "UserKNN", "ContentKNN", "Popularity", "Hybrid", "Collaborative", "ALS", "Content",
               "Sequence", "Blend", "NotFittedError")


def __getattr__(name: str):
    """The estimators (recsys/train/estimators.py), imported on first use: `import recsys`
    stays the serving path only."""
    if name in _ESTIMATORS:
        from recsys.train import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


__all__ = ["Recommender", "Scorer", "ScorerConfig", "fit", "__version__", *_ESTIMATORS]
