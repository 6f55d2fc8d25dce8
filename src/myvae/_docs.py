"""Numpydoc parameter descriptions that several public functions share, written once.

A docstring names a shared block by a line holding only ``{name}``; :func:`doc_params` puts the block there,
indented as that line is. The description may go on in lines indented below the placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from textwrap import dedent, indent
from typing import TypeVar

__all__ = ["COPY", "DATA", "LOAD_DEVICE", "MOD", "doc_params"]

T = TypeVar("T")

DATA = """
data
    Annotated data matrix of raw counts, cells × genes (in memory, or backed on disk), or a MuData holding an RNA
    modality.
"""
MOD = """
mod
    For a MuData: the modality holding the RNA counts (e.g. ``"rna"``).
"""
LOAD_DEVICE = """
accelerator
    Lightning accelerator to put the model on (``"cpu"``, ``"gpu"``, ``"auto"``).
device
    Device index or ``"auto"``.
"""
COPY = """
copy
    Return a copy instead of writing to ``data``.
"""


def doc_params(**blocks: str) -> Callable[[T], T]:
    """Fill the ``{name}`` lines of the decorated object's docstring with the parameter blocks given by name.

    Parameters
    ----------
    **blocks
        Parameter descriptions, each a numpydoc entry (the name, then its description indented by four spaces).
    """

    def decorate(obj: T) -> T:
        unused = set(blocks)

        def fill(match: re.Match) -> str:
            unused.discard(match["name"])
            return indent(dedent(blocks[match["name"]]).strip("\n"), match["indent"])

        names = "|".join(map(re.escape, blocks))
        pattern = rf"^(?P<indent>[ \t]*)\{{(?P<name>{names})\}}[ \t]*$"
        obj.__doc__ = re.sub(pattern, fill, obj.__doc__ or "", flags=re.MULTILINE)
        if unused:
            raise ValueError(f"{obj!r} has no placeholder for {sorted(unused)}")
        return obj

    return decorate
