"""What a trained model tells about cells: denoised expression, posterior predictive counts, ELBO and reconstruction.

:class:`PosteriorMixin` serves :class:`~myvae.MyVAE`; its queries run the module over minibatches of the cells as sparse
CSR counts, sliced from memory or, for counts on disk, read a chunk of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from myvae._batches import batch_code, transform_batches
from myvae._checks import check_same_genes
from myvae._counts import is_out_of_core
from myvae._docs import doc_params

from ._datamodule import batch_codes, in_memory_rows
from ._streaming import streamed_rows

__all__ = ["PosteriorMixin"]

_CELLS = """
adata
    Cells with the model's genes; ``None`` uses the training data.
indices
    Cells to use; ``None`` uses all.
"""
_BATCH_SIZE = """
batch_size
    Cells per minibatch; ``None`` uses scvi-tools' default.
"""


class PosteriorMixin:
    """Posterior queries of a trained model, for a model class with a ``module`` built on the shared networks."""

    def _make_data_loader(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        data_loader_class: type | None = None,
        **data_loader_kwargs,
    ):
        """Minibatches of sparse CSR counts, as training reads them: sliced from memory, or read a chunk at a time.

        On disk, the cells come in increasing order, so ``indices`` must increase (an error says so otherwise).
        Shuffled minibatches, another loader class or loader arguments get scvi-tools' data loader.
        """
        adata = self._validate_anndata(adata)
        if shuffle or data_loader_class is not None or data_loader_kwargs:
            return super()._make_data_loader(
                adata, indices, batch_size, shuffle, data_loader_class, **data_loader_kwargs
            )
        return self._sparse_minibatches(adata, indices, batch_size)

    def _sparse_minibatches(
        self, adata: AnnData, indices: Sequence[int] | None, batch_size: int | None, *, views: bool = False
    ):
        """Minibatches of sparse CSR counts of the chosen cells of ``adata``, in order.

        With ``views``, minibatches read from disk share memory with the next read: each must be used before the
        next is taken (they are not copied).
        """
        manager = self.get_anndata_manager(adata, required=True)
        counts = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        batch_index = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY) if self.n_batch > 1 else None
        batch_size = batch_size or scvi.settings.batch_size
        if not is_out_of_core(counts):
            return in_memory_rows(counts, indices, batch_size, batch_index=batch_index)
        return streamed_rows(counts, indices, batch_size, batch_index=batch_codes(batch_index), views=views)

    def _per_cell(
        self,
        compute: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
    ) -> np.ndarray:
        """``compute`` of every minibatch of the chosen cells, concatenated (cells first)."""
        if adata is not None:
            check_same_genes(self.adata.var_names, adata.var_names)
        minibatches = self._sparse_minibatches(self._validate_anndata(adata), indices, batch_size, views=True)
        self.module.eval()
        device = next(self.module.parameters()).device  # Pyro's module base class has no ``device``
        with torch.inference_mode():
            parts = [compute(_on_device(tensors, device)).cpu().numpy() for tensors in minibatches]
        return np.concatenate(parts, axis=0)

    def _embedding(self, adata: AnnData | None, batch_size: int) -> np.ndarray:
        """Every cell's posterior mean, as ``get_latent_representation()`` gives it, from the mean network alone.

        A module without the shared networks (a registered backend of one's own) goes through
        ``get_latent_representation``.
        """
        networks = getattr(self.module, "networks", None)
        if not hasattr(networks, "posterior_mean"):
            return self.get_latent_representation(adata=adata, give_mean=True, batch_size=batch_size)
        return self._per_cell(
            lambda tensors: networks.posterior_mean(tensors[REGISTRY_KEYS.X_KEY]), adata, None, batch_size
        )

    @doc_params(cells=_CELLS, batch_size=_BATCH_SIZE)
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        library_size: float = 1e4,
        n_samples: int = 25,
        transform_batch: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        r"""Denoised, normalised expression: the posterior mean of :math:`\rho`, scaled to ``library_size``.

        Parameters
        ----------
        {cells}
        library_size
            Counts per cell that each row sums to.
        n_samples
            Draws of :math:`z \sim q(z \mid x)` averaged per cell.
        transform_batch
            A batch (one of :attr:`batch_categories`): express every cell as if it came from that batch, which
            removes the batch effect from the expression; a list of batches averages the expression over them, as
            scvi-tools does. ``None`` decodes each cell with its own batch.
        {batch_size}
        return_numpy
            Return an array instead of a :class:`~pandas.DataFrame` indexed by cells and genes.

        Returns
        -------
        Cells × genes, ``float32``, every row summing to ``library_size``.
        """
        codes = [batch_code(batch, self.batch_categories, "the model") for batch in transform_batches(transform_batch)]
        per_batch = [
            self._per_cell(
                lambda tensors, code=code: self.module.normalized_expression(
                    tensors, n_samples=n_samples, transform_batch=code
                ),
                adata,
                indices,
                batch_size,
            )
            for code in codes
        ]
        expression = library_size * np.mean(per_batch, axis=0, dtype=np.float32)
        if return_numpy:
            return expression
        cells = self._validate_anndata(adata).obs_names
        cells = cells if indices is None else cells[indices]
        return pd.DataFrame(expression, index=cells, columns=self.adata.var_names)

    @doc_params(cells=_CELLS, batch_size=_BATCH_SIZE)
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        n_samples: int = 1,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""Counts drawn from the posterior predictive: :math:`z \sim q(z \mid x)`, then :math:`x' \sim p(x \mid z, l)`.

        Parameters
        ----------
        {cells}
        n_samples
            Draws per cell.
        {batch_size}

        Returns
        -------
        Integer-valued counts, cells × genes, or cells × genes × ``n_samples`` when ``n_samples > 1``.
        """
        return self._per_cell(
            lambda tensors: self.module.sample(tensors, n_samples=n_samples), adata, indices, batch_size
        )

    @doc_params(cells=_CELLS, batch_size=_BATCH_SIZE)
    def get_elbo(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, *, batch_size: int | None = None
    ) -> float:
        """The ELBO per cell on the given cells (higher is better), as scvi-tools' ``get_elbo`` returns it.

        Parameters
        ----------
        {cells}
        {batch_size}
        """
        terms = self._per_cell(
            lambda tensors: sum(self.module.negative_elbo_terms(tensors)), adata, indices, batch_size
        )
        return -float(np.mean(terms))

    @doc_params(cells=_CELLS, batch_size=_BATCH_SIZE)
    def get_reconstruction_error(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, *, batch_size: int | None = None
    ) -> dict[str, float]:
        r"""The reconstruction error :math:`-\mathbb E_q[\log p(x \mid z)]` per cell (lower is better).

        Parameters
        ----------
        {cells}
        {batch_size}

        Returns
        -------
        ``{"reconstruction_loss": value}``, as scvi-tools returns it.
        """

        def reconstruction_loss(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.module.negative_elbo_terms(tensors)[0]

        return {"reconstruction_loss": float(np.mean(self._per_cell(reconstruction_loss, adata, indices, batch_size)))}


def _on_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A minibatch with every tensor on the module's device (minibatches are read on the CPU)."""
    return {key: value.to(device) for key, value in tensors.items()}
