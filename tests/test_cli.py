import subprocess
import sys

import anndata as ad
import pytest

from myvae.__main__ import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--max-epochs", "2", "--out", str(out), "--no-progress", "--backend", "pyro"]) == 0
    printed = capsys.readouterr().out
    for line in ("held-out ELBO per cell", "training time", "ARI vs cell types"):
        assert line in printed
    for name in ("result.h5ad", "umap.png", "elbo.png"):
        assert (out / name).stat().st_size > 0
    result = ad.read_h5ad(out / "result.h5ad")
    assert result.n_vars == 2000
    assert result.obsm["X_myvae"].shape == (result.n_obs, 10)
    assert result.uns["myvae"]["params"]["backend"] == "pyro"
    assert "leiden" in result.obs


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--max-epochs", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["demo", "--backend", "jax"])


def test_module_entry_point_prints_help():
    completed = subprocess.run(
        [sys.executable, "-m", "myvae", "demo", "--help"], capture_output=True, text=True, check=True
    )
    assert "--backend" in completed.stdout and "--max-epochs" in completed.stdout
