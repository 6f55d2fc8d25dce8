"""Keywords that scvi-tools users bring to :class:`~myvae.MyVAE`, with why they do not apply and what to use.

An unknown keyword is an :class:`~myvae.InputError` (:func:`myvae._checks.check_keywords`); one of these gets its
own explanation instead of a list of the valid keywords. :func:`myvae.tl.myvae` takes them too.
"""

from __future__ import annotations

__all__ = ["SCVI_MODEL_KEYWORDS", "SCVI_SETUP_KEYWORDS", "SCVI_TRAIN_KEYWORDS"]

_SIMPLE_MODEL = "myvae is the simple scVI model, a negative binomial VAE with one hidden layer of n_hidden= units"

SCVI_MODEL_KEYWORDS = {
    "n_layers": f"{_SIMPLE_MODEL}; scvi-tools' SCVI builds deeper networks",
    "gene_likelihood": f"{_SIMPLE_MODEL}; for a zero-inflated or a Poisson likelihood use scvi-tools' SCVI",
    "dispersion": f"{_SIMPLE_MODEL}, with one inverse dispersion per gene (scvi-tools' dispersion='gene')",
    "dropout_rate": f"{_SIMPLE_MODEL}, without dropout",
    "use_batch_norm": f"{_SIMPLE_MODEL}, without batch normalisation",
    "use_layer_norm": f"{_SIMPLE_MODEL}, without layer normalisation",
    "latent_distribution": f"{_SIMPLE_MODEL}, with a normal latent code",
    "use_observed_lib_size": f"{_SIMPLE_MODEL}, whose library size is always the observed one (scvi-tools' default)",
    "encode_covariates": f"{_SIMPLE_MODEL}, whose encoder reads the counts alone; the decoder reads the batch",
}
"""Arguments of scvi-tools' ``SCVI`` that :class:`~myvae.MyVAE` does not take."""

_COVARIATES = "the decoder is conditioned on one batch column (batch_key=); for more covariates use scvi-tools' SCVI"
SCVI_SETUP_KEYWORDS = {
    "categorical_covariate_keys": _COVARIATES,
    "continuous_covariate_keys": _COVARIATES,
    "labels_key": "myvae is unsupervised (cell-type labels are scANVI's); compare labelled groups after training "
    "with mv.tl.rank_genes_groups(adata, groupby=...) or model.differential_expression(groupby=...)",
    "size_factor_key": "each cell's library size is its observed total count",
}
"""Arguments of scvi-tools' ``SCVI.setup_anndata`` that :meth:`~myvae.MyVAE.setup_anndata` does not take."""

_HELD_OUT = "the held-out cells are train_size=' complement, drawn at random (seeded by scvi.settings.seed)"
SCVI_TRAIN_KEYWORDS = {
    "early_stopping_monitor": "early stopping always watches the held-out ELBO ('elbo_validation')",
    "early_stopping_mode": "early stopping always watches the held-out ELBO ('elbo_validation')",
    "early_stopping_min_delta": (
        "an epoch counts as an improvement when it beats the best held-out ELBO by early_stopping_min_improvement, "
        "a fraction of it (default 0.003), instead of by an absolute amount"
    ),
    "early_stopping_warmup_epochs": "early stopping counts from the first epoch; raise early_stopping_patience instead",
    "shuffle_set_split": _HELD_OUT,
    "datasplitter_kwargs": f"{_HELD_OUT}; batch_size= sets the minibatches",
    "datamodule": "myvae reads the model's AnnData through its own data module (sparse minibatches, or chunks of "
    "cells from disk); pass the cells to the model instead",
    "load_sparse_tensor": "minibatches are always read as sparse CSR tensors, which is what it asks scvi-tools for",
    "plan_config": "pass the training plan's arguments as plan_kwargs=",
    "n_epochs_kl_warmup": "pass it in plan_kwargs=, as scvi-tools' TrainingPlan takes it",
}
"""Arguments of scvi-tools' ``train`` that :meth:`~myvae.MyVAE.train` does not take."""
