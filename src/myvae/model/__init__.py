"""The model class, for users who want the scvi-tools interface (train, latent, save/load) directly."""

from ._myvae import BACKENDS, MyVAE
from ._pyro_training_plan import ValidatedPyroTrainingPlan

__all__ = ["BACKENDS", "MyVAE", "ValidatedPyroTrainingPlan"]
