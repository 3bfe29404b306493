"""recsys: users, items and content tokens as embedding tables; collaborative, content and
hybrid scores from one torch module. See README.md."""
__version__ = "0.1.0"

from .recommender import Recommender  # noqa: E402
from .scorer import Scorer, ScorerConfig  # noqa: E402

__all__ = ["Recommender", "Scorer", "ScorerConfig", "__version__"]
