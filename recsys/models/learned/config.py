"""The learned scorer's config and the frozen item-side records its parts compute once per
ranking pass (see models/learned/__init__.py for the formulas)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

VARIANTS = ("collaborative", "content", "hybrid", "mf_tokens")


@dataclass
class ScorerConfig:
    n_users: int
    n_items: int
    n_tokens: int
    variant: str = "hybrid"
    dim: int = 64
    alpha: float = 0.5          # hybrid weight of the collaborative part, in [0, 1]
    learn_alpha: bool = False   # learn alpha (through a sigmoid) instead of fixing it
    item_bias: bool = True      # b[i] in the collaborative score
    init_std: float = 0.1
    cold_k: int = 0             # cold items borrow V, b from this many content neighbours (coldstart.py)
    cold_scale: float = 1.0     # ... times this factor
    token_pre_dim: int = 0      # > 0: E = token_pre (T, token_pre_dim) projected to dim (pretrained tokens)
    token_pre_train: bool = False   # fine-tune token_pre too (False: frozen, only the projection learns)
    fold_in_lambda: float = 1.0     # ridge weight of the fold-in of users outside the model (tune.py picks it)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant={self.variant!r} is not one of {VARIANTS}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"model.alpha={self.alpha} is outside [0, 1]")
        if self.dim < 1:
            raise ValueError(f"model.dim={self.dim} must be >= 1")

    @property
    def uses_cf(self) -> bool:
        """The variant has the collaborative tables (config-level: before any model exists)."""
        return self.variant != "content"

    @property
    def uses_content(self) -> bool:
        """The variant scores with a content profile (the content and hybrid variants)."""
        return self.variant in ("content", "hybrid")

    def to_json(self) -> dict:
        return asdict(self)


# names of the data buffers a Scorer holds (all saved in its state_dict, so an export is complete)
BUFFERS = ("tok_indptr", "tok_indices", "tok_weights", "hist_indptr", "hist_indices", "item_warm")
# the cold items' fill matrix (coldstart.py); empty (no filled item) when absent
FILL = ("fill_indptr", "fill_indices", "fill_weights")


def empty_fill(n_items: int) -> dict[str, torch.Tensor]:
    return {"fill_indptr": torch.zeros(n_items + 1, dtype=torch.long),
            "fill_indices": torch.zeros(0, dtype=torch.long), "fill_weights": torch.zeros(0)}


@dataclass(frozen=True)
class HybridSide:
    """The hybrid's item side for the one-matmul ranking (hybrid.py): R = [V, C, b, 1]
    (I, 2D + 2), the float64 means and unbiased covariances of [V, b] and of C."""
    R: torch.Tensor
    mu_cf: torch.Tensor
    S_cf: torch.Tensor
    mu_ct: torch.Tensor
    S_ct: torch.Tensor


@dataclass(frozen=True)
class LearnedItems:
    """Everything item-side of a Scorer, computed once per ranking pass (item_side()).
    V (I, D), b (I,) or None: collaborative rows (in eval mode with cold rows prepared:
    coldstart.cold_rows); C (I, D): pooled content vectors; hybrid: the one-matmul tables
    (hybrid variant, computed when no gradient is recorded)."""
    V: torch.Tensor | None = None
    b: torch.Tensor | None = None
    C: torch.Tensor | None = None
    hybrid: HybridSide | None = None
