"""Training recipes: classifiers now; exits, gates and bottlenecks later."""

from collabinfer.train.classifier import (
    DEFAULT_CONFIGS,
    TrainConfig,
    TrainResult,
    evaluate,
    load_trained,
    train_classifier,
    train_or_load,
)

__all__ = [
    "DEFAULT_CONFIGS",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_trained",
    "train_classifier",
    "train_or_load",
]
