"""The public functions follow scanpy's conventions."""

import inspect

import pytest

import myvae as mv

PUBLIC_FUNCTIONS = [mv.pp.setup_counts, mv.tl.myvae, mv.tl.rank_genes_groups, mv.pl.elbo]


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS, ids=lambda f: f.__name__)
def test_signature_conventions(func):
    parameters = list(inspect.signature(func).parameters.values())
    assert parameters[0].name in {"data", "adata"}
    positional = [p for p in parameters if p.kind in {p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD}]
    assert len(positional) <= 3
    if "copy" in inspect.signature(func).parameters:
        assert inspect.signature(func).parameters["copy"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS, ids=lambda f: f.__name__)
def test_docstrings_have_numpydoc_sections(func):
    doc = inspect.getdoc(func)
    for section in ("Parameters", "Returns", "Examples"):
        assert f"{section}\n---" in doc
