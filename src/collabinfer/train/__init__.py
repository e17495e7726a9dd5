"""Training recipes (classifier, gates, exit heads, bottleneck) over one loop and one cache.

Every recipe walks its data through :func:`~collabinfer.train.loop.fit` and
stores its weights through :func:`~collabinfer.train.cache.cached`, which
refuses the test split before it looks in the cache.
"""

from collabinfer.train.cache import Cached, Slot, cached
from collabinfer.train.classifier import (
    DEFAULT_CONFIGS,
    TrainConfig,
    TrainResult,
    config_for,
    evaluate,
    load_trained,
    train_classifier,
    train_or_load,
)
from collabinfer.train.loop import Phase, fit, require_tuning_split

__all__ = [
    "DEFAULT_CONFIGS",
    "Cached",
    "Phase",
    "Slot",
    "TrainConfig",
    "TrainResult",
    "cached",
    "config_for",
    "evaluate",
    "fit",
    "load_trained",
    "require_tuning_split",
    "train_classifier",
    "train_or_load",
]
