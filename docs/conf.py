"""Sphinx configuration for the myvae documentation."""

from datetime import datetime
from importlib.metadata import metadata

info = metadata("myvae")
project = info["Name"]
author = "myvae developers"
copyright = f"{datetime.now():%Y}, {author}"
version = release = info["Version"]

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_member_order = "groupwise"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "sphinx_book_theme"
html_title = project
