"""What a trained model tells about cells: denoised expression, posterior predictive counts, ELBO and reconstruction.

:class:`PosteriorMixin` serves :class:`~myvae.MyVAE`; its queries run the module over minibatches of the cells as sparse
CSR counts, sliced from memory or, for counts on disk, read a chunk of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from myvae._batches import batch_code, transform_batches
from myvae._checks import check_positive_float, check_positive_int, checked_indices
from myvae._counts import is_out_of_core
from myvae._docs import doc_params
from myvae._exceptions import InputError
from myvae._setup import counts_copy, is_counts_copy
from myvae.module._base import observed_library

from ._datamodule import batch_codes, in_memory_rows
from ._quiet import quiet_training_logs
from ._streaming import streamed_rows

__all__ = ["BATCH_SIZE_DOC", "CELLS_DOC", "PosteriorMixin"]

CELLS_DOC = """
adata
    Cells with the model's genes; ``None`` uses the training data.
indices
    Cells to use; ``None`` uses all.
"""
_GENE_LIST = """
gene_list
    Genes to return (names among the model's genes, in the order given); ``None`` returns all.
"""
BATCH_SIZE_DOC = """
batch_size
    Cells per minibatch; ``None`` uses scvi-tools' default.
"""


class PosteriorMixin:
    """Posterior queries of a trained model, for a model class with a ``module`` built on the shared networks."""

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """The AnnData a query reads, registered with the model: its own, or a checked copy of the counts of ``adata``.

        An AnnData other than the model's own is read through a bare copy of its counts of the model's genes (see
        ``myvae._setup.counts_copy``), from the layer its :func:`~myvae.pp.setup_counts` record or
        :func:`~myvae.tl.myvae` names, else from the model's own layer, and checked as raw counts first: scvi-tools
        would read ``X`` whatever it holds, and write its registration into the caller's AnnData.
        """
        if adata is None or adata is self.adata or is_counts_copy(adata):
            return super()._validate_anndata(adata, copy_if_view)
        setup_args = self.adata_manager.registry["setup_args"]
        batch_key = setup_args.get("batch_key")
        categories = None if batch_key is None else self.batch_categories  # a batch it never saw is refused
        data = counts_copy(adata, self.adata.var_names, setup_args.get("layer"), batch_key, batch_categories=categories)
        with quiet_training_logs():  # scvi-tools' note that it registers the copy
            return super()._validate_anndata(data, copy_if_view)

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
        indices = None if indices is None else checked_indices(indices, counts.shape[0])
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
        minibatches = self._sparse_minibatches(self._validate_anndata(adata), indices, batch_size, views=True)
        self.module.eval()
        device = next(self.module.parameters()).device  # a registered backend's module may have no ``device``
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

    @doc_params(cells=CELLS_DOC, gene_list=_GENE_LIST, batch_size=BATCH_SIZE_DOC)
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        library_size: float | Literal["latent"] = 1e4,
        n_samples: int = 25,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        r"""Denoised, normalised expression: the posterior mean of :math:`\rho`, scaled to ``library_size``.

        Parameters
        ----------
        {cells}
        library_size
            Counts per cell that each row sums to; ``"latent"`` scales each cell's row to its own library size, the
            total of its counts over the model's genes (the model's observed library), which gives the expected
            counts :math:`l_n \rho_n`, as scvi-tools' ``library_size="latent"`` does.
        n_samples
            Draws of :math:`z \sim q(z \mid x)` averaged per cell (each returned, with ``return_mean=False``).
        transform_batch
            A batch (one of :attr:`batch_categories`): express every cell as if it came from that batch, which
            removes the batch effect from the expression; a list of batches averages the expression over them, as
            scvi-tools does. ``None`` decodes each cell with its own batch.
        {gene_list}
        {batch_size}
        return_mean
            Average the ``n_samples`` draws (as scvi-tools does); ``False`` returns each draw.
        return_numpy
            Return an array instead of a :class:`~pandas.DataFrame` indexed by cells and genes.

        Returns
        -------
        Cells × genes, ``float32``; with ``gene_list=None``, every row sums to ``library_size`` (or to the cell's
        library size). With ``return_mean=False`` and ``n_samples > 1``, an array of ``n_samples`` × cells × genes,
        as scvi-tools returns it.
        """
        if library_size != "latent":
            check_positive_float(library_size, 'library_size (a number, or "latent")')
        check_positive_int(n_samples, "n_samples")
        genes = self._chosen_genes(gene_list)
        codes = [batch_code(batch, self.batch_categories, "the model") for batch in transform_batches(transform_batch)]
        data = self._validate_anndata(adata)

        each_draw = not return_mean and n_samples > 1

        def per_cell(tensors: dict[str, torch.Tensor], code: int | None) -> torch.Tensor:
            if each_draw:  # cells × draws × genes, cells first for the concatenation over minibatches
                draws = self.module.expression_draws(tensors, n_samples=n_samples, transform_batch=code)
                rho, library = draws.movedim(0, 1), observed_library(tensors[REGISTRY_KEYS.X_KEY]).unsqueeze(-1)
            else:
                rho = self.module.normalized_expression(tensors, n_samples=n_samples, transform_batch=code)
                library = observed_library(tensors[REGISTRY_KEYS.X_KEY])
            return rho * library if library_size == "latent" else rho

        per_batch = [
            self._per_cell(lambda tensors, code=code: per_cell(tensors, code), data, indices, batch_size)
            for code in codes
        ]
        scale = 1.0 if library_size == "latent" else library_size
        expression = scale * np.mean(per_batch, axis=0, dtype=np.float32)
        if genes is not None:
            expression = expression[..., self._gene_positions(genes)]
        if each_draw:
            return np.moveaxis(expression, 1, 0)
        if return_numpy:
            return expression
        cells = data.obs_names if indices is None else data.obs_names[indices]
        return pd.DataFrame(expression, index=cells, columns=self.adata.var_names if genes is None else genes)

    def _gene_positions(self, genes: pd.Index) -> np.ndarray:
        """Where the genes :meth:`_chosen_genes` returned are among the model's."""
        return self.adata.var_names.get_indexer_for(genes)

    def _chosen_genes(self, gene_list: Sequence[str] | None) -> pd.Index | None:
        """``gene_list`` as an index of the model's genes (``None`` for all); an unknown gene is an InputError."""
        if gene_list is None:
            return None
        if isinstance(gene_list, str):
            raise InputError(
                f"gene_list takes a list of gene names, got the string {gene_list!r}; pass [{gene_list!r}]."
            )
        genes = pd.Index(gene_list)
        model_genes = self.adata.var_names
        unknown = genes[~genes.isin(model_genes)]
        if len(unknown):
            raise InputError(
                f"gene_list: {len(unknown)} of its genes are not among the model's {self.adata.n_vars} genes "
                f"({_some(unknown)})."
            )
        repeated = genes[genes.isin(model_genes[model_genes.duplicated()])]
        if len(repeated):
            raise InputError(
                f"gene_list: the model has {_some(repeated.unique())} more than once, so the name does not say which; "
                "leave gene_list=None and select the columns by position."
            )
        return genes

    @doc_params(cells=CELLS_DOC, gene_list=_GENE_LIST, batch_size=BATCH_SIZE_DOC)
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""Counts drawn from the posterior predictive: :math:`z \sim q(z \mid x)`, then :math:`x' \sim p(x \mid z, l)`.

        Parameters
        ----------
        {cells}
        n_samples
            Draws per cell.
        {gene_list}
        {batch_size}

        Returns
        -------
        Integer-valued counts, cells × genes, or cells × genes × ``n_samples`` when ``n_samples > 1``.
        """
        check_positive_int(n_samples, "n_samples")
        genes = self._chosen_genes(gene_list)
        positions = None if genes is None else torch.from_numpy(self._gene_positions(genes))

        def draws(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            counts = self.module.sample(tensors, n_samples=n_samples)
            return counts if positions is None else counts.index_select(1, positions.to(counts.device))

        return self._per_cell(draws, adata, indices, batch_size)

    @doc_params(cells=CELLS_DOC, batch_size=BATCH_SIZE_DOC)
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

    @doc_params(cells=CELLS_DOC, batch_size=BATCH_SIZE_DOC)
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> float | np.ndarray:
        r"""The marginal log-likelihood :math:`\log p(x_n \mid l_n)` of each cell (higher is better), as scvi-tools'.

        Estimated by importance sampling from the encoder, ``n_mc_samples`` draws of :math:`z` per cell
        (the modules' ``marginal_ll``): a lower bound in expectation, at least the ELBO and
        tighter with more draws. The mean is over cells (scvi-tools averages the minibatches' means, which weighs
        the cells of a smaller last minibatch more).

        Parameters
        ----------
        {cells}
        n_mc_samples
            Draws of :math:`z` per cell.
        {batch_size}
        return_mean
            Return the mean over the cells, else one value per cell (a NumPy array).
        """
        check_positive_int(n_mc_samples, "n_mc_samples")
        if not hasattr(self.module, "marginal_ll"):  # a registered backend's module of one's own
            return super().get_marginal_ll(adata, indices, n_mc_samples, batch_size, return_mean)
        per_cell = self._per_cell(
            lambda tensors: self.module.marginal_ll(tensors, n_mc_samples=n_mc_samples), adata, indices, batch_size
        )
        return float(per_cell.mean()) if return_mean else per_cell

    def differential_abundance(
        self, adata: AnnData | None = None, *, sample_key: str | None = None, **kwargs
    ) -> pd.DataFrame:
        """scvi-tools' :meth:`~scvi.model.base.VAEMixin.differential_abundance`, after checking ``sample_key``.

        The log-density of every cell's embedding under each sample's aggregated posterior (cells × samples),
        returned (scvi-tools stores it in ``obsm["da_log_probs"]`` of the AnnData it scores; an AnnData given here
        is read through a copy of its counts and left as it is). A missing or unknown ``sample_key`` is an
        :class:`~myvae.InputError` before any work (scvi-tools' own method fails with ``KeyError: None``). A model
        from :meth:`~myvae.MyVAE.from_anndata` has a copy of that AnnData's ``obs`` columns, so ``sample_key`` may
        name one of them without ``adata=``.

        Parameters
        ----------
        adata
            Cells with the model's genes and the ``sample_key`` column; ``None`` uses the model's AnnData.
        sample_key
            The ``obs`` column naming each cell's sample.
        **kwargs
            Passed on to scvi-tools' method (``batch_size``, ``num_cells_posterior``, ``dof``, ...).
        """
        target = self._validate_anndata(adata)
        if sample_key is None:
            raise InputError(
                "differential_abundance needs sample_key=, the adata.obs column that names each cell's sample."
            )
        if sample_key not in target.obs.columns:
            columns = (
                ", ".join(repr(column) for column in target.obs.columns if not column.startswith("_scvi")) or "none"
            )
            where = "the model's AnnData's obs" if adata is None else "adata.obs"
            hint = " Pass adata= the AnnData whose obs has it." if adata is None else ""
            raise InputError(f"sample_key={sample_key!r} is not a column of {where} (columns: {columns}).{hint}")
        if kwargs.get("adata_sub") is not None:  # scvi-tools 1.5: the cells to score
            kwargs["adata_sub"] = self._validate_anndata(kwargs["adata_sub"])
        super().differential_abundance(target, sample_key=sample_key, **kwargs)
        scored = target if kwargs.get("adata_sub") is None else kwargs["adata_sub"]
        return scored.obsm["da_log_probs"]

    @doc_params(cells=CELLS_DOC, batch_size=BATCH_SIZE_DOC)
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


def _some(names: pd.Index) -> str:
    """The first few of ``names``, quoted, for a message."""
    return ", ".join(repr(name) for name in names[:5]) + (", ..." if len(names) > 5 else "")


def _on_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A minibatch with every tensor on the module's device (minibatches are read on the CPU)."""
    return {key: value.to(device) for key, value in tensors.items()}
