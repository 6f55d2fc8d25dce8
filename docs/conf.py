"""Sphinx configuration for the myvae documentation (builds offline: no intersphinx inventories)."""

import sys
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "extensions"))

info = metadata("myvae")
project = info["Name"]
author = "myvae developers"
copyright = f"{datetime.now():%Y}, {author}"
version = release = info["Version"]

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinxcontrib.bibtex",
    "free_text_returns",
]

autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False

myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # notebooks are committed with outputs; `make tutorials` executes them
nb_merge_streams = True

bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {"repository_url": "https://github.com/myvae/myvae", "use_repository_button": True}

# Offline build: objects of other packages cannot be resolved without their inventories, so references to them
# are not checked; every reference into myvae itself is.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(anndata|mudata|scanpy|scvi|pyro|torch|lightning|numpy|np|pandas|pd|scipy|matplotlib)(\..*)?"),
    (r"py:.*", r"(AnnData|MuData|Axes|Tensor|Module|Normal|Distribution|Sequence|PathLike|Path|Callable)"),
    (r"py:.*", r"(optional|None|int|float|str|bool|dict|list|tuple|Any|Literal.*|Iterator.*)"),
    (r"py:.*", r"(typing|os|collections|pathlib)\..*"),
    (r"py:class", r"myvae(\.\w+)*\._\w+.*"),  # private base classes and aliases
    (r"py:class", r"(Backend|LossOutput|TorchDistribution|BaseModuleClass|PyroBaseModuleClass).*"),
]
