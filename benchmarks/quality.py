"""Embedding quality and batch correction of myvae against scvi-tools' SCVI and PCA, scored by scib-metrics.

Data sets (2,000 highly variable genes each):

- ``pbmc3k``: PBMC 3k with its cell-type annotation (one batch: biology conservation only);
- ``pbmc3k_two_batches``: PBMC 3k split at random into two batches, with a gene-wise batch effect applied to the
  counts of the second: every gene's counts are redrawn as Poisson(x · f_g · d) with a fold change
  f_g = exp(N(0, 0.5²)) per gene and a depth factor d = 0.7 for the whole batch (cell types known: biology and
  batch metrics);
- ``kang2017``: 1,000 control and 1,000 interferon-β-stimulated PBMCs (Kang et al. 2017) from ``../shared/data``,
  labelled only by condition (batch metrics only).

Methods, each with its defaults: ``PCA`` (50 components of log-normalised counts), scvi-tools ``SCVI``
(``n_layers=1, n_hidden=128, n_latent=10``, with the batch key), ``SCVI`` configured as myvae's model
(``scvi_same_model``: NB likelihood, no dropout, no batch or layer norm, no KL warm-up; trained with SCVI's
defaults otherwise) and myvae with both backends (batch key given to ``setup_counts``). scib-metrics'
``Benchmarker`` scores the embeddings (unscaled); the held-out ELBO per cell is
computed on the same 10% of cells for SCVI and myvae. On the data sets with a batch, SCVI and myvae also run with
``FURTHER_SEEDS`` (their batch scores move with the seed; the targets compare means over the seeds) and myvae (torch)
also trains the fixed epochs of ``LONGER_TRAINING`` without early stopping.

    python benchmarks/quality.py          # about 40 minutes on 2 cores (`make bench-quality`)
    python benchmarks/quality.py --quick  # the PBMC two-batch set only (about 12 minutes)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("PCA", "scvi_SCVI", "scvi_same_model", "myvae_torch", "myvae_pyro")
N_LATENT, N_HIDDEN = 10, 128
SEED = 0
FURTHER_SEEDS = (1, 2)
"""Seeds run besides ``SEED`` on the data sets with a batch: their batch-correction scores move with the seed (the
split into training and held-out cells, the initial weights, the minibatches)."""
LONGER_TRAINING = {"myvae_torch_100_epochs": 100, "myvae_torch_400_epochs": 400}
"""myvae (torch) trained a fixed number of epochs without early stopping, keeping the last weights, on the data sets
with a batch: how batch mixing and the held-out ELBO move when training goes on past the best held-out epoch (400
is as long as ``SCVI``'s defaults train)."""


# ---------------------------------------------------------------- data ----------------------------------------------


def _hvg(adata, batch_key: str | None = None):
    import scanpy as sc

    sc.pp.filter_cells(adata, min_counts=1)
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", batch_key=batch_key, subset=True)
    sc.pp.filter_cells(adata, min_counts=1)
    return adata


def pbmc3k():
    """PBMC 3k's annotated cells and 2,000 highly variable genes."""
    import myvae as mv

    adata = mv.datasets.pbmc3k()
    adata = adata[adata.obs["cell_type"].notna()].copy()
    adata.obs["batch"] = "pbmc3k"
    return _hvg(adata)


def with_batch_effect(adata, seed: int = SEED, sigma: float = 0.5, depth: float = 0.7):
    """Split the cells at random into two batches and redraw the second's counts with a gene-wise batch effect."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    adata = adata.copy()
    second = rng.random(adata.n_obs) < 0.5
    adata.obs["batch"] = np.where(second, "batch_2", "batch_1")
    fold_change = np.exp(rng.normal(0.0, sigma, size=adata.n_vars)) * depth
    counts = sparse.csr_matrix(adata.X, dtype=np.float32)
    rows = counts[second].tocoo()
    redrawn = rng.poisson(rows.data * fold_change[rows.col]).astype(np.float32)
    shifted = sparse.csr_matrix((redrawn, (rows.row, rows.col)), shape=rows.shape)
    shifted.eliminate_zeros()
    counts = sparse.vstack([counts[~second], shifted]).tocsr()
    order = np.concatenate([np.flatnonzero(~second), np.flatnonzero(second)])
    adata = adata[order].copy()
    adata.X = counts
    return adata[np.asarray(counts.sum(axis=1)).ravel() > 0].copy()


def kang2017(data_dir: Path):
    """Kang et al. 2017, control and stimulated PBMCs, labelled only by condition."""
    import anndata as ad

    adata = ad.read_h5ad(data_dir / "kang2017_ctrl_stim_2000.h5ad")
    adata.obs["cell_type"] = "unlabelled"
    return _hvg(adata, batch_key="batch")


# ---------------------------------------------------------------- methods -------------------------------------------


def embed(method: str, adata, batch_key: str | None, seed: int = SEED) -> dict:
    """Train ``method`` on ``adata`` with its defaults; the embedding, held-out ELBO per cell and seconds.

    ``method`` is one of ``METHODS`` or of ``LONGER_TRAINING``; ``seed`` seeds SCVI and myvae alike.
    """
    import scanpy as sc
    import scvi

    import myvae as mv

    scvi.settings.seed = seed
    start = time.perf_counter()
    if method == "PCA":
        normalised = adata.copy()
        sc.pp.normalize_total(normalised)
        sc.pp.log1p(normalised)
        sc.pp.pca(normalised, n_comps=50, random_state=SEED)
        return {"embedding": normalised.obsm["X_pca"], "heldout_elbo": None, "seconds": time.perf_counter() - start}
    if method.startswith("scvi"):
        from train_throughput import SAME_MODEL_KWARGS, SAME_MODEL_PLAN_KWARGS

        same_model = method == "scvi_same_model"
        data = adata.copy()
        scvi.model.SCVI.setup_anndata(data, batch_key=batch_key)
        model_kwargs = SAME_MODEL_KWARGS if same_model else {}
        model = scvi.model.SCVI(data, n_layers=1, n_hidden=N_HIDDEN, n_latent=N_LATENT, **model_kwargs)
        plan_kwargs = SAME_MODEL_PLAN_KWARGS if same_model else None
        model.train(accelerator="cpu", enable_progress_bar=False, plan_kwargs=plan_kwargs)
    else:
        data = adata.copy()
        mv.pp.setup_counts(data, batch_key=batch_key)
        fixed_epochs = LONGER_TRAINING.get(method)
        training = {} if fixed_epochs is None else {"max_epochs": fixed_epochs, "early_stopping": False}
        model = mv.tl.myvae(
            data,
            backend=method.split("_")[1],
            random_state=seed,
            return_model=True,
            progress=False,
            accelerator="cpu",
            **training,
        )
    seconds = time.perf_counter() - start
    return {
        "embedding": model.get_latent_representation(),
        "heldout_elbo": float(model.get_elbo(indices=model.validation_indices)),
        "seconds": seconds,
        **convergence(model.history, model.trainer.max_epochs, getattr(model, "restored_epoch_", None)),
    }


def convergence(history: dict, max_epochs: int, restored_epoch: int | None = None) -> dict:
    """How training ended: epochs run, the best held-out epoch, the first within 1% of it, and the epoch returned.

    ``within_1pct_epoch`` is the first epoch whose held-out ELBO is within 1% of the run's best; the best epochs
    are ``None`` where the held-out ELBO was not scored every epoch (SCVI's defaults). ``restored_epoch`` is the
    epoch whose weights the model returned has (myvae's early stopping restores the best), ``None`` for the last.
    """
    epochs = len(history["elbo_train"])
    heldout = history.get("elbo_validation")
    negative_elbo = None if heldout is None else heldout.to_numpy(dtype=float).ravel()
    return {
        "epochs": epochs,
        "max_epochs": int(max_epochs),
        "best_epoch": None if negative_elbo is None else int(np.argmin(negative_elbo)) + 1,
        "within_1pct_epoch": None if negative_elbo is None else first_within(negative_elbo, 0.01),
        "restored_epoch": restored_epoch,
        "stopped_early": epochs < max_epochs,
    }


def first_within(negative_elbo: np.ndarray, fraction: float) -> int:
    """The first epoch (counting from 1) whose negative ELBO is within ``fraction`` of the run's best."""
    best = negative_elbo.min()
    return int(np.argmax(negative_elbo <= best + fraction * abs(best))) + 1


def score(adata, embeddings: dict[str, np.ndarray], bio: bool, batch: bool) -> dict[str, dict[str, float]]:
    """scib-metrics' unscaled scores of each embedding: every metric, the two aggregates and the total."""
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    for key, embedding in embeddings.items():
        adata.obsm[key] = np.asarray(embedding, dtype=np.float32)
    benchmarker = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=list(embeddings),
        bio_conservation_metrics=BioConservation() if bio else None,
        batch_correction_metrics=BatchCorrection() if batch else None,
        pre_integrated_embedding_obsm_key="PCA" if batch else None,
        n_jobs=2,
        progress_bar=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benchmarker.benchmark()
    table = benchmarker.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore")
    return {method: {column: float(value) for column, value in row.items()} for method, row in table.iterrows()}


# ---------------------------------------------------------------- driver -------------------------------------------


SEEDED_METHODS = ("scvi_SCVI", "myvae_torch", "myvae_pyro")
"""The methods whose runs are repeated with ``FURTHER_SEEDS``."""


def run_dataset(name: str, adata, batch_key: str | None, bio: bool, batch: bool) -> dict:
    """Every method on one data set, scored; with a batch, also over further seeds and with longer training.

    ``results`` holds each method's run with ``SEED``; ``over_seeds`` (data sets with a batch only) holds, for the
    seeded methods and the ``LONGER_TRAINING`` runs, one run per seed (``SEED`` first).
    """
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    runs = {(method, SEED): embed(method, adata, batch_key) for method in METHODS}
    if batch:
        for seed in (SEED, *FURTHER_SEEDS):
            for method in (*SEEDED_METHODS, *LONGER_TRAINING):
                if (method, seed) not in runs:
                    runs[method, seed] = embed(method, adata, batch_key, seed)
    scores = score(adata, {_key(*method_seed): run.pop("embedding") for method_seed, run in runs.items()}, bio, batch)
    for method_seed, run in runs.items():
        run["scib"] = scores[_key(*method_seed)]
    entry = {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "batch_key": batch_key,
        "results": {method: runs[method, SEED] for method in METHODS},
    }
    if batch:
        entry["over_seeds"] = {
            method: [{"seed": seed, **run} for (run_method, seed), run in runs.items() if run_method == method]
            for method in (*SEEDED_METHODS, *LONGER_TRAINING)
        }
    _print_dataset(name, entry)
    return entry


def _key(method: str, seed: int) -> str:
    """The embedding's key in ``obsm`` (the seed-0 runs keep the method's name: PCA is the reference embedding)."""
    return method if seed == SEED else f"{method}_seed{seed}"


def _print_dataset(name: str, entry: dict) -> None:
    print(f"\n{name}: {entry['n_cells']} cells × {entry['n_genes']} genes")
    for method, result in entry["results"].items():
        scib = result["scib"]
        aggregates = {key: scib[key] for key in ("Bio conservation", "Batch correction", "Total") if key in scib}
        elbo = "" if result["heldout_elbo"] is None else f"held-out ELBO {result['heldout_elbo']:.2f}"
        shown = "  ".join(f"{key} {value:.3f}" for key, value in aggregates.items())
        print(f"  {method:<12} {shown}  {elbo}  ({result['seconds']:.0f} s)")
    for method, runs in entry.get("over_seeds", {}).items():
        shown = "  ".join(f"{key} {_over_seeds(runs, key)}" for key in AGGREGATES if key in runs[0]["scib"])
        print(f"  {method} over seeds: {shown}  held-out ELBO {_over_seeds(runs, 'heldout_elbo', '.2f')}")


AGGREGATES = ("Batch correction", "Bio conservation", "Total")


def _label(method: str) -> str:
    """A method's name in the table over seeds (the ``LONGER_TRAINING`` runs say how they trained)."""
    epochs = LONGER_TRAINING.get(method)
    return method if epochs is None else f"myvae_torch, {epochs} epochs, last weights"


def seed_mean(runs: list[dict], key: str) -> float:
    """The mean over seeds of a score (or of ``heldout_elbo``)."""
    return float(np.mean([_value(run, key) for run in runs]))


def _over_seeds(runs: list[dict], key: str, form: str = ".3f") -> str:
    each = ", ".join(format(_value(run, key), form) for run in runs)
    return f"{seed_mean(runs, key):{form}} ({each})"


def markdown_report(report: dict) -> str:
    """The scores as Markdown tables, one per data set (included by the docs)."""
    lines = []
    for name, entry in report["datasets"].items():
        methods = list(entry["results"])
        metrics = list(entry["results"][methods[0]]["scib"])
        lines += [
            f"**{name}**: {entry['n_cells']:,} cells × {entry['n_genes']:,} genes"
            + (f", batch key `{entry['batch_key']}`" if entry["batch_key"] else "")
            + ".",
            "",
            "| metric | " + " | ".join(methods) + " |",
            "|---|" + "---:|" * len(methods),
        ]
        for metric in metrics:
            values = [entry["results"][method]["scib"][metric] for method in methods]
            lines.append(f"| {metric} | " + " | ".join(f"{value:.3f}" for value in values) + " |")
        elbos = [entry["results"][method]["heldout_elbo"] for method in methods]
        lines.append("| held-out ELBO per cell | " + " | ".join("—" if e is None else f"{e:.2f}" for e in elbos) + " |")
        epochs = [_epochs(entry["results"][method]) for method in methods]
        lines.append(
            "| epochs run (returned, best held-out, first within 1% of it, max) | " + " | ".join(epochs) + " |"
        )
        lines.append("")
        if "over_seeds" in entry:
            lines += _over_seeds_table(entry["over_seeds"])
    return "\n".join(lines)


def _over_seeds_table(over_seeds: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: each seeded method's aggregates and held-out ELBO, their mean over seeds and each seed's."""
    first_runs = next(iter(over_seeds.values()))
    seeds = ", ".join(str(run["seed"]) for run in first_runs)
    keys = [key for key in AGGREGATES if key in first_runs[0]["scib"]]
    lines = [
        f"Over seeds {seeds} (mean, then each seed):",
        "",
        "| method | " + " | ".join(keys) + " | held-out ELBO per cell | epochs run (returned) |",
        "|---|" + "---:|" * (len(keys) + 2),
    ]
    for method, runs in over_seeds.items():
        scores = [_over_seeds(runs, key) for key in keys] + [_over_seeds(runs, "heldout_elbo", ".2f")]
        epochs = ", ".join(f"{run['epochs']} ({run.get('restored_epoch') or run['epochs']})" for run in runs)
        lines.append(f"| {_label(method)} | " + " | ".join(scores) + f" | {epochs} |")
    lines.append("")
    return lines


def _epochs(result: dict) -> str:
    if "max_epochs" not in result:
        return "—"
    stopped = ", stopped early" if result["stopped_early"] else ""
    returned = result.get("restored_epoch") or result["epochs"]
    if result["best_epoch"] is None:
        return f"{result['epochs']} ({returned}, not scored, {result['max_epochs']}{stopped})"
    within = result.get("within_1pct_epoch", "—")
    return f"{result['epochs']} ({returned}, {result['best_epoch']}, {within}, {result['max_epochs']}{stopped})"


PREVIOUS_HELDOUT_ELBO = {"pbmc3k": -676.21, "pbmc3k_two_batches": -615.94, "kang2017": -455.98}
"""myvae's held-out ELBO per cell (torch and Pyro agreed) with the defaults before early stopping restored the best
epoch (learning rate 4e-3 at 512 cells, patience 45, any gain counted): benchmarks/results/quality.json of commit
9ad39e6. The targets of issue #18 ask the new defaults to stay within 0.5% of these."""


def targets_report(report: dict) -> str:
    """The quality targets, each with the figures this run measured and whether it is met, as Markdown."""
    rows = ["| target | data set | myvae torch | myvae Pyro | SCVI | met |", "|---|---|---:|---:|---:|:---:|"]

    def add(target: str, name: str, key: str, higher_is_better: bool = True) -> None:
        entry = report["datasets"].get(name, {})
        if not entry.get("results"):
            return
        methods = ("myvae_torch", "myvae_pyro", "scvi_SCVI")
        if "over_seeds" in entry:  # the mean over the seeds
            value = {method: seed_mean(entry["over_seeds"][method], key) for method in methods}
            target += f" (mean over {len(entry['over_seeds']['myvae_torch'])} seeds)"
        else:
            value = {method: _value(entry["results"][method], key) for method in methods}
        if higher_is_better:
            met = value["myvae_torch"] >= value["scvi_SCVI"] and value["myvae_pyro"] >= value["scvi_SCVI"]
        else:
            met = value["myvae_torch"] <= value["scvi_SCVI"] and value["myvae_pyro"] <= value["scvi_SCVI"]
        shown = " | ".join(f"{value[method]:.3f}" for method in value)
        rows.append(f"| {target} | {name} | {shown} | {'yes' if met else '**no**'} |")

    add("total scib score ≥ SCVI's", "pbmc3k_two_batches", "Total")
    add("bio conservation score ≥ SCVI's", "pbmc3k_two_batches", "Bio conservation")
    add("batch correction score ≥ SCVI's", "kang2017", "Batch correction")
    add("held-out ELBO per cell ≥ SCVI's (negative ELBO ≤)", "pbmc3k", "heldout_elbo")
    for name, entry in report["datasets"].items():
        torch_elbo = entry["results"]["myvae_torch"]["heldout_elbo"]
        pyro_elbo = entry["results"]["myvae_pyro"]["heldout_elbo"]
        gap = abs(torch_elbo - pyro_elbo) / abs(torch_elbo)
        rows.append(
            f"| the backends' held-out ELBO within 1% | {name} | {torch_elbo:.2f} | {pyro_elbo:.2f} | — | "
            f"{'yes' if gap <= 0.01 else '**no**'} ({gap:.2%}) |"
        )
    for name, entry in report["datasets"].items():
        results = entry["results"]
        met = results["myvae_torch"]["stopped_early"] and results["myvae_pyro"]["stopped_early"]
        shown = " | ".join(_epochs(results[method]) for method in ("myvae_torch", "myvae_pyro", "scvi_SCVI"))
        rows.append(
            "| defaults converge: early stopping on the held-out ELBO ends training before `max_epochs` "
            f"(epochs run (returned, best, first within 1% of best, max)) | {name} | {shown} | "
            f"{'yes' if met else '**no**'} |"
        )
    for name, entry in report["datasets"].items():
        results = [entry["results"][method] for method in ("myvae_torch", "myvae_pyro")]
        if any(result.get("within_1pct_epoch") is None for result in results):
            continue  # a report of a run from before this was measured
        met = all(result["epochs"] <= 2 * result["within_1pct_epoch"] for result in results)
        shown = " | ".join(f"{result['epochs']} ≤ 2 × {result['within_1pct_epoch']}" for result in results)
        rows.append(
            f"| epochs run ≤ 2 × the epochs to come within 1% of the best held-out ELBO | {name} | {shown} | — | "
            f"{'yes' if met else '**no**'} |"
        )
    for name, entry in report["datasets"].items():
        previous = PREVIOUS_HELDOUT_ELBO.get(name)
        if previous is None:
            continue
        elbos = [entry["results"][method]["heldout_elbo"] for method in ("myvae_torch", "myvae_pyro")]
        met = all(elbo >= previous - 0.005 * abs(previous) for elbo in elbos)
        rows.append(
            f"| held-out ELBO per cell within 0.5% of the previous defaults' ({previous:.2f}) or better | {name} | "
            f"{elbos[0]:.2f} | {elbos[1]:.2f} | — | {'yes' if met else '**no**'} |"
        )
    return "\n".join(rows) + "\n"


def _value(result: dict, key: str) -> float:
    return result["heldout_elbo"] if key == "heldout_elbo" else result["scib"][key]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the PBMC two-batch set only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--report", type=Path, help="only rewrite the Markdown tables from this JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.report is not None:
        write_markdown(json.loads(args.report.read_text()), args.report)
        return 0

    pbmc = pbmc3k()
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "quick": args.quick,
        "datasets": {},
    }
    if not args.quick:
        report["datasets"]["pbmc3k"] = run_dataset("pbmc3k", pbmc.copy(), None, bio=True, batch=False)
    report["datasets"]["pbmc3k_two_batches"] = run_dataset(
        "pbmc3k_two_batches", with_batch_effect(pbmc), "batch", bio=True, batch=True
    )
    if not args.quick and (args.data_dir / "kang2017_ctrl_stim_2000.h5ad").exists():
        report["datasets"]["kang2017"] = run_dataset(
            "kang2017", kang2017(args.data_dir), "batch", bio=False, batch=True
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out)
    print(f"\nwrote {args.out} and its Markdown tables")
    return 0


def write_markdown(report: dict, json_path: Path) -> None:
    """Write the results table and the targets table beside the JSON."""
    json_path.with_suffix(".md").write_text(markdown_report(report))
    json_path.with_name(json_path.stem + "_targets.md").write_text(targets_report(report))


if __name__ == "__main__":
    sys.exit(main())
