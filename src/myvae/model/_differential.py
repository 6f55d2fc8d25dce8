r"""Bayesian differential expression from a trained :class:`~myvae.MyVAE`, in the manner of scVI.

For two groups of cells A and B, the posterior of the normalised expression :math:`\rho` of each group is sampled
by drawing random cells of the group, a latent code :math:`z \sim q(z \mid x)` for each and decoding it,
:math:`\rho = \mathrm{softmax}(f(z, s))`. The draws of A and B are paired and compared gene by gene:

- ``"change"`` mode: the log fold change :math:`\mathrm{LFC} = \log_2(\rho_A + \epsilon) - \log_2(\rho_B + \epsilon)`;
  a gene is differentially expressed when :math:`|\mathrm{LFC}| > \delta`, with posterior probability
  ``proba_de``;
- ``"vanilla"`` mode: the probability that :math:`\rho_A > \rho_B`.

Genes are ranked by the posterior mean LFC (:func:`ranking`); the probabilities call them (:func:`expected_fdr`).

Only the sampled cells are read and encoded (a chunk of rows at a time when the counts are on disk), and the
latent codes are decoded in minibatches; every random draw comes from generators local to the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from myvae._checks import check_positive_float, check_positive_int
from myvae._exceptions import InputError

from ._streaming import streamed_rows

__all__ = [
    "DEFAULT_N_SAMPLES",
    "Comparison",
    "check_options",
    "differential_expression",
    "expected_fdr",
    "log_odds",
    "pseudocount_for",
    "ranking",
]

Mode = Literal["change", "vanilla"]
DEFAULT_N_SAMPLES = 5000
"""Posterior draws per group and comparison: scvi-tools' ``n_samples_overall``."""
DECODE_BATCH_SIZE = 2048
"""Latent codes decoded at a time."""


@dataclass(frozen=True)
class Comparison:
    """One comparison: the cells of group A (``cells``) against those of the reference B (``reference_cells``)."""

    name: str
    cells: np.ndarray
    reference_cells: np.ndarray


def check_options(
    mode: Any,
    delta: Any,
    n_samples: Any,
    fdr: Any,
    batch_correction: Any,
    random_state: Any,
    *,
    fdr_name: str = "fdr",
) -> None:
    """Raise an :class:`~myvae.InputError` for a bad option of :func:`differential_expression`.

    ``fdr_name`` is what the caller calls the FDR target (scvi-tools: ``fdr_target``).
    """
    if mode not in ("change", "vanilla"):
        raise InputError(f"mode must be 'change' or 'vanilla', got {mode!r}.")
    check_positive_float(delta, "delta")
    check_positive_int(n_samples, "n_samples")
    if isinstance(fdr, bool) or not isinstance(fdr, int | float | np.number) or not 0 < fdr < 1:
        raise InputError(f"{fdr_name} must be a number between 0 and 1 (exclusive), e.g. 0.05; got {fdr!r}.")
    if not isinstance(batch_correction, bool | np.bool_):
        raise InputError(f"batch_correction must be True or False, got {batch_correction!r}.")
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0:
        raise InputError(f"random_state must be a non-negative integer, got {random_state!r}.")


def pseudocount_for(n_genes: int) -> float:
    r"""The :math:`\epsilon` added to :math:`\rho` before taking logs: a tenth of the mean proportion.

    That is ``0.1 / n_genes``. It keeps genes that are barely expressed in both groups from getting large log fold
    changes out of ratios of tiny proportions, whatever the number of genes.
    """
    return 0.1 / n_genes


def log_odds(proba: np.ndarray, n_draws: int) -> np.ndarray:
    r"""The log odds :math:`\log p - \log(1 - p)` of probabilities estimated from ``n_draws`` draws.

    The counts of draws get half a draw on each side (:math:`p = (k + 1/2) / (n + 1)`), so a gene never seen on
    one side gets :math:`\pm\log(2n + 1)`, the largest evidence ``n_draws`` draws can resolve, not infinity.
    """
    successes = np.asarray(proba, dtype=np.float64) * n_draws
    return np.log(successes + 0.5) - np.log(n_draws - successes + 0.5)


def expected_fdr(proba_de: np.ndarray) -> np.ndarray:
    """Posterior expected false discovery rate of the list of genes down to each gene, by decreasing ``proba_de``.

    For gene g the list holds every gene with ``proba_de >= proba_de[g]`` (ties enter together), and its expected
    FDR is the mean of ``1 - proba_de`` over that list. Calling the genes whose value is at most ``fdr`` DE calls
    the longest such list whose expected FDR is at most ``fdr``.
    """
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    ranked = proba_de[order]
    cumulative = np.cumsum(1.0 - ranked) / np.arange(1, len(ranked) + 1)
    # the last position of each run of ties closes the list that the whole run belongs to
    last_of_tie = np.searchsorted(-ranked, -ranked, side="right") - 1
    result = np.empty_like(proba_de)
    result[order] = cumulative[last_of_tie]
    return result


def ranking(table: pd.DataFrame) -> np.ndarray:
    """Positions of the genes of a table by decreasing posterior mean LFC (``lfc_mean``), ties by ``proba_de``.

    The mean LFC is an effect size: against a reference made of several cell types it is the average of the fold
    changes against each, weighted by their shares, so a marker shared with a minority of the reference loses only
    that share, where a probability of change would put it below every gene up against all of them.
    """
    return np.lexsort((-table["proba_de"].to_numpy(), -table["lfc_mean"].to_numpy()))


def _encode(
    networks: torch.nn.Module, counts: Any, cells: np.ndarray, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and standard deviation of :math:`q(z \mid x)` of the given cells (strictly increasing rows)."""
    locs, scales = [], []
    for tensors in streamed_rows(counts, cells, batch_size, views=True):  # each used before the next
        qz = networks.posterior(tensors[REGISTRY_KEYS.X_KEY].to(device))
        locs.append(qz.loc)
        scales.append(qz.scale)
    return torch.cat(locs), torch.cat(scales)


class _PosteriorSampler:
    r"""Draws of :math:`\rho` for cells of the data, from the encoded cells and local random generators."""

    def __init__(
        self,
        networks: torch.nn.Module,
        encoded_cells: np.ndarray,
        loc: torch.Tensor,
        scale: torch.Tensor,
        batch_codes: np.ndarray | None,
        batch_correction: bool,
        seed: int,
    ):
        self.networks = networks
        self.encoded_cells = encoded_cells
        self.loc, self.scale = loc, scale
        self.batch_codes = batch_codes
        self.batch_correction = batch_correction
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device="cpu").manual_seed(int(self.rng.integers(2**63 - 1)))

    def draw(self, cells: np.ndarray, n_samples: int) -> np.ndarray:
        r"""``n_samples`` draws of :math:`\rho` (draws × genes, float32), each of a random cell of ``cells``."""
        chosen = self.rng.choice(cells, size=n_samples, replace=True)
        rows = torch.as_tensor(np.searchsorted(self.encoded_cells, chosen), device=self.loc.device)
        noise = torch.randn(n_samples, self.loc.shape[1], generator=self.generator).to(self.loc.device)
        z = self.loc[rows] + self.scale[rows] * noise
        codes = None if self.batch_codes is None else torch.as_tensor(self.batch_codes[chosen], device=z.device)
        parts = []
        for start in range(0, n_samples, DECODE_BATCH_SIZE):
            block = slice(start, start + DECODE_BATCH_SIZE)
            parts.append(self._decode(z[block], None if codes is None else codes[block]))
        return torch.cat(parts).cpu().numpy()

    def _decode(self, z: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        if codes is None:
            return self.networks.log_rho(z).exp()
        if not self.batch_correction:
            return self.networks.log_rho(z, codes).exp()
        n_batch = self.networks.n_batch
        total = sum(self.networks.log_rho(z, torch.full_like(codes, batch)).exp() for batch in range(n_batch))
        return total / n_batch


def _change_statistics(rho_a: np.ndarray, rho_b: np.ndarray, delta: float, pseudocount: float) -> dict[str, Any]:
    lfc = np.log2(rho_a + pseudocount)
    lfc -= np.log2(rho_b + pseudocount)
    n_draws = lfc.shape[0]
    proba_de = np.mean(lfc > delta, axis=0) + np.mean(lfc < -delta, axis=0)
    return {
        "proba_de": proba_de,
        "bayes_factor": log_odds(proba_de, n_draws),
        **_lfc_summary(lfc),
    }


def _vanilla_statistics(rho_a: np.ndarray, rho_b: np.ndarray, pseudocount: float) -> dict[str, Any]:
    n_draws = rho_a.shape[0]
    proba_greater = np.mean(rho_a > rho_b, axis=0)
    proba_less = np.mean(rho_a < rho_b, axis=0)
    lfc = np.log2(rho_a + pseudocount)
    lfc -= np.log2(rho_b + pseudocount)
    return {
        "proba_de": np.maximum(proba_greater, proba_less),
        "bayes_factor": log_odds(proba_greater, n_draws),
        **_lfc_summary(lfc),
    }


def _lfc_summary(lfc: np.ndarray) -> dict[str, np.ndarray]:
    return {"lfc_mean": lfc.mean(axis=0), "lfc_median": np.median(lfc, axis=0), "lfc_std": lfc.std(axis=0)}


def differential_expression(
    networks: torch.nn.Module,
    counts: Any,
    comparisons: Sequence[Comparison],
    *,
    genes: pd.Index,
    batch_codes: np.ndarray | None = None,
    mode: Mode = "change",
    delta: float = 0.25,
    n_samples: int = DEFAULT_N_SAMPLES,
    fdr: float = 0.05,
    batch_correction: bool = False,
    random_state: int = 0,
    batch_size: int = 1024,
) -> dict[str, pd.DataFrame]:
    r"""Posterior differential expression of each comparison, one table per comparison.

    Parameters
    ----------
    networks
        The trained model's :class:`~myvae.module.VAENetworks` (``model.module.networks``, the same for both
        backends).
    counts
        Cells × genes counts of the data the comparisons index: in memory, or on disk (a backed AnnData's ``X``, a
        zarr, h5py or dask array), read a chunk of rows at a time.
    comparisons
        The groups to compare, as row indices of ``counts``.
    genes
        Names of the genes, the index of every table.
    batch_codes
        Each cell's batch code in the model's batches, or ``None`` for a model without batches.
    mode
        ``"change"`` or ``"vanilla"`` (see the module's documentation).
    delta
        Smallest :math:`|\mathrm{LFC}|` that counts as differential expression (``"change"`` mode).
    n_samples
        Posterior draws per group and comparison, each of a random cell of the group.
    fdr
        Target of the posterior expected false discovery rate for ``is_de_fdr``.
    batch_correction
        Decode every draw in every batch of the model and average, instead of in its cell's own batch.
    random_state
        Seed of the cell choice and the latent draws.
    batch_size
        Cells encoded at a time.

    Returns
    -------
    For each comparison, a table indexed by gene with ``proba_de``, ``bayes_factor`` (log odds of ``proba_de`` in
    ``"change"`` mode, of :math:`\rho_A > \rho_B` in ``"vanilla"`` mode), ``lfc_mean``, ``lfc_median``,
    ``lfc_std``, ``expected_fdr`` (see :func:`expected_fdr`) and ``is_de_fdr``; :func:`ranking` orders it.
    """
    device = next(networks.parameters()).device
    pseudocount = pseudocount_for(len(genes))
    needed = np.unique(np.concatenate([np.concatenate([c.cells, c.reference_cells]) for c in comparisons]))
    was_training = networks.training
    networks.eval()
    try:
        with torch.inference_mode():
            loc, scale = _encode(networks, counts, needed, batch_size, device)
            sampler = _PosteriorSampler(networks, needed, loc, scale, batch_codes, batch_correction, random_state)
            tables = {}
            for comparison in comparisons:
                rho_a = sampler.draw(comparison.cells, n_samples)
                rho_b = sampler.draw(comparison.reference_cells, n_samples)
                if mode == "change":
                    statistics = _change_statistics(rho_a, rho_b, delta, pseudocount)
                else:
                    statistics = _vanilla_statistics(rho_a, rho_b, pseudocount)
                table = pd.DataFrame(statistics, index=genes)
                table["expected_fdr"] = expected_fdr(table["proba_de"].to_numpy())
                table["is_de_fdr"] = table["expected_fdr"] <= fdr
                tables[comparison.name] = table
    finally:
        networks.train(was_training)
    return tables
