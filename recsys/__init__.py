"""recsys: users, items and content tokens as embedding tables; collaborative, content and
hybrid scores from one torch module. See README.md."""
__version__ = "0.1.0"

from recsys.serve.recommender import Recommender  # noqa: E402
from recsys.models.learned import Scorer, ScorerConfig  # noqa: E402

__all__ = ["Recommender", "Scorer", "ScorerConfig", "__version__"]
