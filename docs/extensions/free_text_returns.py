"""Render a numpydoc ``Returns`` section written as prose as prose.

Napoleon reads each unindented line of a ``Returns`` section as a return *type*; our docstrings describe the
returned value in sentences instead (the type comes from the annotation through sphinx-autodoc-typehints), so the
whole section becomes the description of ``:returns:``.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.ext.napoleon import NumpyDocstring


def _parse_returns_as_prose(self: NumpyDocstring, section: str) -> list[str]:
    lines = self._dedent(self._consume_to_next_section())
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return []
    return [f":returns: {lines[0]}", *(f"    {line}" if line else "" for line in lines[1:]), ""]


def setup(app: Sphinx) -> dict[str, bool]:
    """Register the extension."""
    NumpyDocstring._parse_returns_section = _parse_returns_as_prose
    return {"parallel_read_safe": True}
