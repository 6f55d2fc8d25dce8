"""What the generative model gives each cell, as scvi-tools' ``RNASeqMixin`` reports it.

:class:`GenerativeQueriesMixin` serves :class:`~myvae.MyVAE`: the negative binomial's parameters
(``get_likelihood_parameters``), the library size (``get_latent_library_size``: observed in this model) and the
gene–gene correlation of denoised expression (``get_feature_correlation_matrix``). It runs on the minibatches of
:class:`~myvae.model._posterior.PosteriorMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import stats
from scvi import REGISTRY_KEYS

from myvae._batches import batch_code, transform_batches
from myvae._checks import check_positive_float, check_positive_int
from myvae._docs import doc_params
from myvae._exceptions import InputError
from myvae.module._base import observed_library

from ._posterior import BATCH_SIZE_DOC, CELLS_DOC

__all__ = ["GenerativeQueriesMixin"]

_CORRELATIONS = ("spearman", "pearson")


class GenerativeQueriesMixin:
    """scvi-tools' ``get_likelihood_parameters``, ``get_latent_library_size`` and ``get_feature_correlation_matrix``."""

    @doc_params(cells=CELLS_DOC, batch_size=BATCH_SIZE_DOC)
    def get_likelihood_parameters(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        give_mean: bool = False,
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        r"""Each cell's negative binomial: its mean :math:`l_n \rho_{{ng}}` and inverse dispersion :math:`\theta_g`.

        As scvi-tools' ``get_likelihood_parameters`` for a negative-binomial model: for draws of
        :math:`z \sim q(z \mid x)` (with the cell's own batch).

        Parameters
        ----------
        {cells}
        n_samples
            Draws of z per cell.
        give_mean
            Average over the draws (with ``n_samples > 1``).
        {batch_size}

        Returns
        -------
        ``{{"mean": ..., "dispersions": ...}}``, each cells × genes, ``float32`` (``n_samples`` × cells × genes when
        ``n_samples > 1`` and not ``give_mean``); ``dispersions`` repeats :math:`\theta_g` for every cell.
        """
        check_positive_int(n_samples, "n_samples")

        def parameters(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            both = self.module.likelihood_parameters(tensors, n_samples=n_samples)
            stacked = torch.stack([both["mean"], both["dispersions"]])  # 2 × (samples ×) cells × genes
            return stacked.movedim(-2, 0)  # cells first, for the concatenation over minibatches

        per_cell = self._per_cell(parameters, adata, indices, batch_size)  # cells × 2 × (samples ×) genes
        per_cell = np.moveaxis(per_cell, 0, -2)  # 2 × (samples ×) cells × genes
        if n_samples > 1 and give_mean:
            per_cell = per_cell.mean(axis=1)
        return {"mean": per_cell[0], "dispersions": per_cell[1]}

    @doc_params(cells=CELLS_DOC, batch_size=BATCH_SIZE_DOC)
    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Each cell's library size :math:`l_n`: in this model the observed total of its counts over the model's genes.

        scvi-tools' models with a latent library give its posterior mean (``give_mean=True``) or its observed
        value; here the library is observed (as in scvi-tools' ``SCVI`` by default), so both give the totals.

        Parameters
        ----------
        {cells}
        give_mean
            Taken for scvi-tools' signature; the library is observed, so it changes nothing.
        {batch_size}

        Returns
        -------
        Cells × 1, ``float32``.
        """
        del give_mean  # the observed library has no posterior to average
        return self._per_cell(
            lambda tensors: observed_library(tensors[REGISTRY_KEYS.X_KEY]), adata, indices, batch_size
        ).astype(np.float32)

    @doc_params(cells=CELLS_DOC)
    def get_feature_correlation_matrix(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 10,
        batch_size: int = 64,
        rna_size_factor: float = 1000,
        transform_batch: str | Sequence[str] | None = None,
        correlation_type: Literal["spearman", "pearson"] = "spearman",
    ) -> pd.DataFrame:
        r"""Gene–gene correlation of denoised expression, as scvi-tools' ``get_feature_correlation_matrix``.

        For each of ``n_samples`` draws of :math:`z \sim q(z \mid x)` per cell, denoised expression is drawn from the
        gamma part of the negative binomial, :math:`\mathrm{Gamma}(\theta_g, \theta_g / (s \rho_{{ng}}))` with
        :math:`s` = ``rna_size_factor`` (mean :math:`s\rho_{{ng}}`, without the Poisson noise of counts); the
        correlation is taken over all cells and draws, and averaged over the batches of ``transform_batch``.

        Parameters
        ----------
        {cells}
        n_samples
            Draws per cell.
        batch_size
            Cells per minibatch.
        rna_size_factor
            The library size :math:`s` the expression is scaled to.
        transform_batch
            A batch of the model, or a list of them (the correlations are averaged over them); ``None`` decodes each
            cell with its own batch.
        correlation_type
            ``"spearman"`` (rank correlation) or ``"pearson"``.

        Returns
        -------
        Genes × genes, indexed by the model's genes.
        """
        check_positive_int(n_samples, "n_samples")
        check_positive_int(batch_size, "batch_size")
        check_positive_float(rna_size_factor, "rna_size_factor")
        if correlation_type not in _CORRELATIONS:
            raise InputError(f"correlation_type takes 'spearman' or 'pearson', got {correlation_type!r}.")
        codes = [batch_code(batch, self.batch_categories, "the model") for batch in transform_batches(transform_batch)]
        data = self._validate_anndata(adata)
        theta = self.module.networks.log_theta.detach().exp()

        def denoised(tensors: dict[str, torch.Tensor], code: int | None) -> torch.Tensor:
            rho = self.module.expression_draws(tensors, n_samples=n_samples, transform_batch=code)
            rho = rho.reshape(n_samples, *rho.shape[-2:]).movedim(0, 1)  # cells × samples × genes
            rate = theta.to(rho.device) / (rna_size_factor * rho)
            return torch.distributions.Gamma(theta.to(rho.device), rate).sample()

        correlations = []
        for code in codes:
            samples = self._per_cell(lambda tensors, code=code: denoised(tensors, code), data, indices, batch_size)
            flat = samples.reshape(-1, samples.shape[-1]).astype(np.float64)
            if correlation_type == "spearman":  # Pearson's correlation of the ranks
                flat = stats.rankdata(flat, axis=0)
            correlations.append(np.corrcoef(flat, rowvar=False))
        genes = self.adata.var_names
        return pd.DataFrame(np.mean(correlations, axis=0), index=genes, columns=genes)
