"""The README's Python example runs as written, in a fresh scanpy session with what myvae installs.

Its calls run unchanged; only the cost is cut: the bundled data are cut to fewer cells, training to a few epochs
and the ranking to fewer draws, through the functions the example calls.
"""

import importlib
import re
from pathlib import Path

import matplotlib

import myvae as mv

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    match = re.search(r"## Use it from Python\n\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "the README has no Python example under 'Use it from Python'"
    return match.group(1)


def test_the_readme_python_example_runs_as_written(monkeypatch):
    matplotlib.use("Agg")
    bundled, train, rank = mv.datasets.pbmc3k, mv.tl.myvae, mv.tl.rank_genes_groups
    monkeypatch.setattr(mv.datasets, "pbmc3k", lambda: bundled()[:800].copy())
    monkeypatch.setattr(mv.tl, "myvae", lambda *args, **kwargs: train(*args, max_epochs=3, progress=False, **kwargs))
    monkeypatch.setattr(mv.tl, "rank_genes_groups", lambda *args, **kwargs: rank(*args, n_samples=200, **kwargs))
    namespace = {}
    exec(_python_example(), namespace)
    adata = namespace["adata"]
    assert adata.obsm["X_myvae"].shape == (800, 10)
    assert adata.uns["myvae"]["params"]["backend"] == "pyro" and adata.uns["myvae"]["params"]["layer"] == "counts"
    assert adata.obs["leiden"].nunique() > 1
    assert set(adata.uns["rank_genes_groups"]["names"].dtype.names) == set(adata.obs["leiden"].cat.categories)


def test_the_readme_example_needs_nothing_myvae_does_not_install():
    """Leiden's igraph flavour (igraph is a dependency); scanpy's default flavour needs leidenalg, which is not."""
    example = _python_example()
    calls = re.findall(r"sc\.tl\.leiden\((.*)\)", example)
    assert calls and all('flavor="igraph"' in call for call in calls)
    for module in re.findall(r"^import (\w+)", example, re.MULTILINE):
        importlib.import_module(module)
