"""The model class, for users who want the scvi-tools interface (train, latent, save/load) directly."""

from ._backends import BACKENDS, register_backend
from ._defaults import (
    ADAM_SETTINGS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT,
    DEFAULT_EARLY_STOPPING_PATIENCE,
    DEFAULT_TRAIN_SIZE,
    TrainingSettings,
    default_learning_rate,
    default_max_epochs,
)
from ._joint_adam import JointAdam
from ._myvae import MyVAE
from ._pyro_training_plan import ValidatedPyroTrainingPlan
from ._record import model_from_record, model_to_record
from ._training_plan import LeanTrainingPlan

__all__ = [
    "ADAM_SETTINGS",
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT",
    "DEFAULT_EARLY_STOPPING_PATIENCE",
    "DEFAULT_TRAIN_SIZE",
    "JointAdam",
    "LeanTrainingPlan",
    "MyVAE",
    "TrainingSettings",
    "ValidatedPyroTrainingPlan",
    "default_learning_rate",
    "default_max_epochs",
    "model_from_record",
    "model_to_record",
    "register_backend",
]
