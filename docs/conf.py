"""Sphinx configuration for the myvae documentation (builds offline: the intersphinx inventories are committed)."""

import importlib
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
    "sphinx.ext.intersphinx",
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

# Links to other projects' documentation. The inventories are read from docs/_inventories/ (no network at build
# time); docs/_scripts/make_inventories.py writes them from the installed packages.
_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "pandas": "https://pandas.pydata.org/docs",
    "matplotlib": "https://matplotlib.org/stable",
    "anndata": "https://anndata.readthedocs.io/en/stable",
    "mudata": "https://mudata.readthedocs.io/en/stable",
    "scanpy": "https://scanpy.readthedocs.io/en/stable",
    "scvi-tools": "https://docs.scvi-tools.org/en/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
    "pyro": "https://docs.pyro.ai/en/stable",
    "lightning": "https://lightning.ai/docs/pytorch/stable",
}
intersphinx_mapping = {name: (url, f"_inventories/{name}.inv") for name, url in _INVENTORIES.items()}

# Every reference must resolve. Type hints name classes by the module that defines them; these are documented
# under their public names.
nitpicky = True
QUALNAME_OVERRIDES = {
    "anndata._core.anndata.AnnData": "anndata.AnnData",
    "mudata._core.mudata.MuData": "mudata.MuData",
    "pandas.core.frame.DataFrame": "pandas.DataFrame",
    "pandas.core.indexes.base.Index": "pandas.Index",
    "pandas.core.series.Series": "pandas.Series",
    "numpy.random._generator.Generator": "numpy.random.Generator",
    "numpy.random.mtrand.RandomState": "numpy.random.RandomState",
    "lightning.pytorch.callbacks.callback.Callback": "lightning.pytorch.callbacks.Callback",
    "matplotlib.axes._axes.Axes": "matplotlib.axes.Axes",
    "torch.nn.modules.module.Module": "torch.nn.Module",
    "scvi.train._trainingplans.TrainingPlan": "scvi.train.TrainingPlan",
    "scvi.train._trainingplans.PyroTrainingPlan": "scvi.train.PyroTrainingPlan",
    "scvi.module.base._base_module.BaseModuleClass": "scvi.module.base.BaseModuleClass",
    "scvi.module.base._base_module.PyroBaseModuleClass": "scvi.module.base.PyroBaseModuleClass",
    "scvi.module.base._base_module.LossOutput": "scvi.module.base.LossOutput",
    "scvi.model.base._base_model.BaseModelClass": "scvi.model.base.BaseModelClass",
    "scvi.model.base._vaemixin.VAEMixin": "scvi.model.base.VAEMixin",
    "pyro.distributions.torch.Normal": "pyro.distributions.Normal",
    "pyro.distributions.torch.Independent": "pyro.distributions.Independent",
}

# The one name left unresolved on purpose: the sentinel that stands for mask_var's default ("highly_variable" if that
# column exists), as scanpy's own sentinel does in its signatures; the parameter's description says what it means.
nitpick_ignore = [("py:class", "myvae._genes._Default")]


def _public_name(app, env, node, contnode):
    """Resolve a reference to a class by its defining module through the name its project documents it under."""
    from sphinx.ext.intersphinx import missing_reference

    public = QUALNAME_OVERRIDES.get(node.get("reftarget"))
    if public is None:
        return None
    node["reftarget"] = public
    return missing_reference(app, env, node, contnode)


def _public_bases(app, name, obj, options, bases):
    """Leave myvae's private base classes (not exported by their package) out of a class's listed bases."""
    bases[:] = [base for base in bases if not base.__module__.startswith("myvae.") or _exported(base)]


def _exported(cls) -> bool:
    package = importlib.import_module(cls.__module__.rsplit("._", 1)[0])
    return cls.__name__ in getattr(package, "__all__", ())


def setup(app):
    """Connect the handlers above."""
    app.connect("missing-reference", _public_name)
    app.connect("autodoc-process-bases", _public_bases)
