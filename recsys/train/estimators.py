"""Estimators as users of implicit and scikit-learn expect: a model with its parameters, unfitted
until `fit`, then answering like the `Recommender` it holds.

    import recsys
    model = recsys.EASE(lam=200)                   # checked now, fitted later
    model.get_params()                             # every value the fit will use, defaults included
    model.fit(ratings, items=movies)               # a DataFrame (user, item[, rating]) or a sparse matrix
    ids, scores = model.recommend(["u1", "u2"], k=10)
    model.save_pretrained("my-model")              # the export train.py writes

    recsys.Hybrid(dim=32, optim={"lr": 0.02}).fit(ratings, items=movies, max_epochs=10)
    recsys.Blend(recsys.EASE(), recsys.ContentKNN(k=50), alpha=0.8, norm="max").fit(ratings, items=movies)

Each is `recsys.fit(..., model=...)` underneath (train/fit.py: the same specs and defaults as
train.py's configs/model/*.yaml); `fit`'s keywords are recsys.fit's (time_col, max_epochs, seed,
search, ...). The fitted Recommender is `model.recommender_`.
"""
from __future__ import annotations

from typing import Any, ClassVar

from recsys.train.fit import fit
from recsys.train.specs import as_spec


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model called before `fit` (scikit-learn's name)."""


class Estimator:
    kind: ClassVar[str] = ""
    _served: ClassVar[tuple[str, ...]] = ("recommend", "recommend_for_history", "similar_items", "similar_users",
                                          "scores", "add_items", "save_pretrained")

    def __init__(self, **params: Any):
        self._params = dict(params)
        self._spec()                         # names and values checked now, one line each
        self.recommender_ = None

    def _model(self) -> dict:
        return {"kind": self.kind, **self._params}

    def _spec(self):
        return as_spec(self._model())

    def get_params(self, deep: bool = True) -> dict:
        """Every parameter the fit will use, the defaults of configs/model/<kind>.yaml included."""
        return self._spec().effective_params()

    def set_params(self, **params: Any) -> "Estimator":
        new = {**self._params, **params}
        as_spec({"kind": self.kind, **new})
        self._params = new
        return self

    def fit(self, interactions, items=None, **options: Any) -> "Estimator":
        """Fit on a DataFrame or a users x items sparse matrix (recsys.fit's keywords in
        `options`); returns the estimator, fitted."""
        self.recommender_ = fit(interactions, items, model=self._model(), **options)
        return self

    @property
    def is_fitted(self) -> bool:
        return self.recommender_ is not None

    def __getattr__(self, name: str):
        if name in type(self)._served:      # the Recommender's methods, once fitted
            if self.__dict__.get("recommender_") is None:
                raise NotFittedError(f"{type(self).__name__} is not fitted yet: call .fit(interactions) before .{name}()")
            return getattr(self.recommender_, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"


class EASE(Estimator):
    """EASE (Steck 2019), with side information when side > 0."""
    kind = "ease"


class LowRankEASE(Estimator):
    """EASE from the Gram matrix's top `rank` eigenpairs: memory items x rank, for large catalogs."""
    kind = "ease_lowrank"


class ItemKNN(Estimator):
    kind = "itemknn"


class UserKNN(Estimator):
    kind = "userknn"


class ContentKNN(Estimator):
    """Item-item similarity of the items' TF-IDF token vectors: reaches items with no interaction."""
    kind = "content_knn"


class Popularity(Estimator):
    kind = "popularity"


class Hybrid(Estimator):
    """The learned token-embedding model: alpha * z_u(collaborative) + (1 - alpha) * z_u(content)."""
    kind = "hybrid"


class Collaborative(Estimator):
    """The learned matrix factorisation part alone."""
    kind = "collaborative"


class ALS(Estimator):
    """Matrix factorisation trained by implicit-feedback alternating least squares (train/als.py)."""
    kind = "als"


class Content(Estimator):
    """The learned content-token part alone."""
    kind = "content"


class Sequence(Estimator):
    """The next-item transformer over each user's items in time order (fit with time_col=)."""
    kind = "sequence"


class Blend(Estimator):
    """alpha * n_u(first) + (1 - alpha) * n_u(second); parts are estimators, kind names or dicts."""
    kind = "blend"

    def __init__(self, first: Any, second: Any, alpha: float = 0.5, norm: str = "zscore"):
        super().__init__(first=_part(first), second=_part(second), alpha=alpha, norm=norm)


def _part(p):
    return p._model() if isinstance(p, Estimator) else p


ESTIMATORS = {cls.__name__: cls for cls in (EASE, LowRankEASE, ItemKNN, UserKNN, ContentKNN, Popularity, Hybrid, Collaborative,
                                             ALS, Content, Sequence, Blend)}
