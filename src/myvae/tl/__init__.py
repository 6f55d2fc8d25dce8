"""Tools: train the model and embed cells, and rank genes by differential expression."""

from ._myvae import myvae
from ._rank_genes_groups import rank_genes_groups

__all__ = ["myvae", "rank_genes_groups"]
