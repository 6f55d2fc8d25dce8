"""The model class, for users who want the scvi-tools interface (train, latent, save/load) directly."""

from ._myvae import BACKENDS, MyVAE, default_learning_rate, register_backend
from ._pyro_training_plan import ValidatedPyroTrainingPlan
from ._record import model_from_record, model_to_record
from ._training_plan import LeanTrainingPlan

__all__ = [
    "BACKENDS",
    "LeanTrainingPlan",
    "MyVAE",
    "ValidatedPyroTrainingPlan",
    "default_learning_rate",
    "model_from_record",
    "model_to_record",
    "register_backend",
]
