"""Training: `train(config, resume=False) -> TrainResult` and its config models (`gadms train`)."""
from gadms_model.training.config import DataConfig, OptimConfig, TrainConfig, ValidationConfig
from gadms_model.training.trainer import TrainResult, train

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "TrainResult", "ValidationConfig", "train"]
