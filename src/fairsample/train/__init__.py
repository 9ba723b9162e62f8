"""Training: the one accelerate loop and the method hooks fair methods plug into."""

from fairsample.train.loop import TrainResult, train
from fairsample.train.methods import METHODS, StepContext, TrainMethod, get_method

__all__ = ["METHODS", "StepContext", "TrainMethod", "TrainResult", "get_method", "train"]
