"""Differential expression: ``mv.tl.rank_genes_groups`` against scanpy's Wilcoxon test and scvi-tools' DE.

Data: PBMC 3k's 2,638 annotated cells and 2,000 highly variable genes, and the same cells split into two batches with
a gene-wise batch effect on the second (both built as in ``benchmarks/quality.py``).

1. **Markers**: myvae trained with ``mv.tl.myvae``'s defaults, then ``mv.tl.rank_genes_groups`` (``"change"``
   mode, defaults) for every cell type against the rest; the rank of the textbook markers in their group's list.
   The same posterior is also ranked the way the first version did and scvi-tools does, by ``proba_de`` (genes with
   ``lfc_mean > 0``, ties by ``lfc_mean``), to show what the ranking rule changes.
2. **Agreement**: per cell type, the overlap of the top 50 genes with scanpy's Wilcoxon ranking (log-normalised
   counts) and with scvi-tools' ``differential_expression`` (``mode="change"``, its defaults otherwise) on an SCVI of
   the same size (``n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb"``) trained for as many epochs as
   myvae trained (no early stopping). scvi-tools' top 50 are its genes with ``lfc_mean > 0`` in its own order
   (``proba_de``), ties broken by ``lfc_mean``.
3. **Time**: all cell types against the rest, myvae against scvi-tools' DE on the same data, in one run.
4. **Batch-driven calls**: on the two-batch set, with a model trained with the batch key:
   a) each cell type's cells in batch 2 against its cells in batch 1 — the split is random, so every DE call is
   driven by the batch; b) a comparison confounded with the batch, B cells of batch 1 against CD14+ monocytes of
   batch 2: the DE calls among the genes that are *not* DE between B cells and CD14+ monocytes in the batch-free
   data (``proba_de < 0.5`` there) are batch-driven. Both counted with ``batch_correction=False`` and ``True``.
   As a control, the confounded comparison on the same cells without the batch effect (their batch-free counts, a
   model trained on them without a batch key): the calls among those genes there are what two models disagree on,
   the floor that the batch-driven calls are measured against. The same counts with scvi-tools: an SCVI of the size
   above trained with the batch key (and one on the control's counts) for as many epochs as myvae's two-batch model,
   ``differential_expression(mode="change")`` with ``batch_correction=False`` and ``True``.

    python benchmarks/de.py           # myvae's default training (7-10 minutes on 2 free cores)
    python benchmarks/de.py --quick   # 30 epochs for every model
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import N_HIDDEN, N_LATENT, SEED, pbmc3k, with_batch_effect

ROOT = Path(__file__).resolve().parents[1]
GROUPBY = "cell_type"
MARKERS = {
    "B": ["MS4A1", "CD79A"],
    "NK": ["GNLY", "NKG7"],
    "CD14+ Mono": ["CD14", "LYZ"],
    "FCGR3A+ Mono": ["FCGR3A", "MS4A7"],
    "Platelet": ["PPBP", "PF4"],
}
TOP = 50
MIN_CELLS_PER_BATCH = 30
CONFOUNDED = ("B|batch_1", "CD14+ Mono|batch_2")
"""The comparison confounded with the batch: B cells of batch 1 against CD14+ monocytes of batch 2."""
CONFOUNDED_MARKERS = (*MARKERS["B"], *MARKERS["CD14+ Mono"])
"""The markers of the two cell types of the confounded comparison."""


def _ranked_names(adata, key: str = "rank_genes_groups") -> dict[str, list[str]]:
    names = adata.uns[key]["names"]
    return {group: [str(gene) for gene in names[group]] for group in names.dtype.names}


def ranked_by_proba_de(adata, key: str = "rank_genes_groups") -> dict[str, list[str]]:
    """Per group, the genes with ``lfc_mean > 0`` by decreasing ``proba_de`` (ties by ``lfc_mean``): scvi's order."""
    result = adata.uns[key]
    ranked = {}
    for group in result["names"].dtype.names:
        names = np.asarray(result["names"][group]).astype(str)
        lfc = np.asarray(result["logfoldchanges"][group], dtype=np.float64)
        proba = np.asarray(result["proba_de"][group], dtype=np.float64)
        order = [i for i in np.lexsort((-lfc, -proba)) if lfc[i] > 0]
        ranked[group] = list(names[order])
    return ranked


def train_myvae(adata, epochs: int | None, batch_key: str | None = None):
    """Set up and train myvae with its defaults (``epochs``: ``None`` for the default); the model and seconds."""
    import myvae as mv

    mv.pp.setup_counts(adata, batch_key=batch_key)
    start = time.perf_counter()
    model = mv.tl.myvae(adata, max_epochs=epochs, return_model=True, progress=False, accelerator="cpu")
    return model, time.perf_counter() - start


def run_myvae_de(adata, model, **kwargs) -> tuple[dict[str, list[str]], dict[str, list[str]], float]:
    """``mv.tl.rank_genes_groups`` for every cell type against the rest; its ranking, the proba_de order, seconds."""
    import myvae as mv

    start = time.perf_counter()
    mv.tl.rank_genes_groups(adata, GROUPBY, model=model, **kwargs)
    seconds = time.perf_counter() - start
    return _ranked_names(adata), ranked_by_proba_de(adata), seconds


def run_wilcoxon(adata) -> dict[str, list[str]]:
    """The Wilcoxon ranking (scanpy) of every cell type against the rest, on log-normalised counts."""
    import scanpy as sc

    normalised = adata.copy()
    sc.pp.normalize_total(normalised)
    sc.pp.log1p(normalised)
    sc.tl.rank_genes_groups(normalised, GROUPBY, method="wilcoxon")
    return _ranked_names(normalised)


def train_scvi(adata, epochs: int, batch_key: str | None = None):
    """An SCVI of myvae's size (NB likelihood) on a copy of ``adata``, trained for ``epochs``; the model and seconds."""
    import scvi

    scvi.settings.seed = SEED
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key=batch_key)
    model = scvi.model.SCVI(data, n_latent=N_LATENT, n_hidden=N_HIDDEN, n_layers=1, gene_likelihood="nb")
    start = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    return model, time.perf_counter() - start


def run_scvi_de(adata, epochs: int) -> tuple[dict[str, list[str]], float, float]:
    """SCVI of myvae's size trained for ``epochs``; its per-group ranking, DE seconds and training seconds."""
    model, training = train_scvi(adata, epochs)
    start = time.perf_counter()
    table = model.differential_expression(groupby=GROUPBY, mode="change", silent=True)
    seconds = time.perf_counter() - start
    ranked = {}
    for group, part in table.groupby("group1", observed=True):
        up = part[part["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
        ranked[str(group)] = [str(gene) for gene in up.index]
    return ranked, seconds, training


def marker_ranks(ranked: dict[str, list[str]]) -> dict[str, dict[str, int | None]]:
    """1-based rank of each marker in its group's list (``None`` if absent)."""
    return {
        group: {gene: (ranked[group].index(gene) + 1 if gene in ranked[group] else None) for gene in genes}
        for group, genes in MARKERS.items()
    }


def overlaps(ours: dict[str, list[str]], theirs: dict[str, list[str]]) -> dict[str, float]:
    """Per group, the fraction of the top ``TOP`` genes two rankings share."""
    return {group: len(set(ours[group][:TOP]) & set(theirs[group][:TOP])) / TOP for group in ours if group in theirs}


def batch_driven_calls(epochs: int | None, clean_model, clean) -> dict:
    """DE calls driven by the batch on the two-batch set, without and with batch correction, myvae and scvi-tools."""
    import myvae as mv

    adata = with_batch_effect(clean)
    adata.obs["type_batch"] = adata.obs[GROUPBY].astype(str) + "|" + adata.obs["batch"].astype(str)
    counts = adata.obs.groupby([GROUPBY, "batch"], observed=True).size().unstack()
    types = [t for t in counts.index if (counts.loc[t] >= MIN_CELLS_PER_BATCH).all()]
    # the control: the same cells and comparisons without the batch effect
    control = clean[adata.obs_names].copy()
    control.obs["type_batch"] = adata.obs["type_batch"].to_numpy()

    reference = clean.copy()
    mv.tl.rank_genes_groups(reference, GROUPBY, groups=["B"], reference="CD14+ Mono", model=clean_model)
    proba = dict(
        zip(
            reference.uns["rank_genes_groups"]["names"]["B"],
            reference.uns["rank_genes_groups"]["proba_de"]["B"],
            strict=True,
        )
    )
    null_genes = {gene for gene, p in proba.items() if p < 0.5}

    model, _ = train_myvae(adata, epochs, batch_key="batch")
    control_model, _ = train_myvae(control, epochs)
    epochs_trained = int(adata.uns["myvae"]["params"]["epochs_trained"])
    scvi_model, _ = train_scvi(adata, epochs_trained, batch_key="batch")
    scvi_control_model, _ = train_scvi(control, epochs_trained)
    return {
        "cell_types": types,
        "n_null_genes": len(null_genes),
        "scvi_epochs": epochs_trained,
        "myvae": _calls_with_and_without_correction(
            _myvae_caller(adata, model), _myvae_caller(control, control_model), types, null_genes
        ),
        "scvi": _calls_with_and_without_correction(
            _scvi_caller(scvi_model), _scvi_caller(scvi_control_model), types, null_genes
        ),
    }


def _myvae_caller(adata, model):
    """The genes ``mv.tl.rank_genes_groups`` calls DE (FDR 0.05) between two groups of ``type_batch``."""
    import myvae as mv

    def called(group: str, reference: str, batch_correction: bool = False) -> set[str]:
        mv.tl.rank_genes_groups(
            adata, "type_batch", groups=[group], reference=reference, batch_correction=batch_correction, model=model
        )
        ranking = adata.uns["rank_genes_groups"]
        return {str(g) for g, c in zip(ranking["names"][group], ranking["is_de_fdr"][group], strict=True) if c}

    return called


def _scvi_caller(model):
    """The genes scvi-tools' ``differential_expression`` calls DE (FDR 0.05) between two groups of ``type_batch``."""

    def called(group: str, reference: str, batch_correction: bool = False) -> set[str]:
        table = model.differential_expression(
            groupby="type_batch",
            group1=group,
            group2=reference,
            mode="change",
            batch_correction=batch_correction,
            silent=True,
        )
        return {str(gene) for gene in table.index[table["is_de_fdr_0.05"].to_numpy()]}

    return called


def _calls_with_and_without_correction(called, called_without_batch_effect, types, null_genes: set[str]) -> dict:
    """Same-type calls per cell type, and the confounded comparison's calls, without and with batch correction.

    ``called(group, reference, batch_correction)`` gives the genes called DE on the two-batch set,
    ``called_without_batch_effect(group, reference)`` those called on the same cells without the batch effect.
    """
    result = {"same_type": {}, "confounded": {}}
    for correction in (False, True):
        label = "batch_correction" if correction else "no_correction"
        result["same_type"][label] = {
            cell_type: len(called(f"{cell_type}|batch_2", f"{cell_type}|batch_1", batch_correction=correction))
            for cell_type in types
        }
        result["confounded"][label] = _confounded(called(*CONFOUNDED, batch_correction=correction), null_genes)
    result["confounded"]["without_batch_effect"] = _confounded(called_without_batch_effect(*CONFOUNDED), null_genes)
    return result


def _confounded(called: set[str], null_genes: set[str]) -> dict:
    """The confounded comparison's calls, those among ``null_genes`` and the markers among them."""
    return {
        "calls": len(called),
        "calls_among_null_genes": len(called & null_genes),
        "markers_called": sorted(called & set(CONFOUNDED_MARKERS)),
    }


def run(quick: bool) -> dict:
    """Every measurement, as the report's dictionary."""
    epochs = 30 if quick else None
    clean = pbmc3k()
    adata = clean.copy()
    model, training_seconds = train_myvae(adata, epochs)
    epochs_trained = int(adata.uns["myvae"]["params"]["epochs_trained"])
    ours, ours_by_proba, de_seconds = run_myvae_de(adata, model)
    wilcoxon = run_wilcoxon(clean)
    scvi_ranked, scvi_seconds, scvi_training = run_scvi_de(clean, epochs_trained)
    return {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "versions": {package: version(package) for package in ("myvae", "scvi-tools", "scanpy", "torch")},
        "quick": quick,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "epochs_trained": epochs_trained,
        "training_seconds": {"myvae": training_seconds, "scvi": scvi_training},
        "de_seconds": {"myvae": de_seconds, "scvi": scvi_seconds, "ratio_scvi_over_myvae": scvi_seconds / de_seconds},
        "marker_ranks": {
            "myvae": marker_ranks(ours),
            "myvae_by_proba_de": marker_ranks(ours_by_proba),
            "scvi": marker_ranks(scvi_ranked),
            "wilcoxon": marker_ranks(wilcoxon),
        },
        "top50_overlap": {"wilcoxon": overlaps(ours, wilcoxon), "scvi": overlaps(ours, scvi_ranked)},
        "top50_overlap_by_proba_de": {
            "wilcoxon": overlaps(ours_by_proba, wilcoxon),
            "scvi": overlaps(ours_by_proba, scvi_ranked),
        },
        "scvi_vs_wilcoxon_top50_overlap": overlaps(scvi_ranked, wilcoxon),
        "batch": batch_driven_calls(epochs, model, adata),
    }


def _rank(value: int | None) -> str:
    return "—" if value is None else (f"**{value}**" if value <= 10 else str(value))


def markdown_report(report: dict) -> str:
    """The results as Markdown tables."""
    lines = [
        "# Differential expression benchmark",
        "",
        f"PBMC 3k, {report['n_cells']:,} annotated cells × {report['n_genes']:,} highly variable genes; "
        + ("**quick run** (30 epochs per model)" if report["quick"] else "full run (myvae's default training)")
        + f", myvae trained {report['epochs_trained']} epochs, SCVI the same number. "
        f"Machine: {report['machine']['platform']}, Python {report['machine']['python']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ". Produced by `python benchmarks/de.py"
        + (" --quick`." if report["quick"] else "`."),
        "",
        "## Textbook markers: rank in their group's list (bold: top 10)",
        "",
        "myvae: `tl.rank_genes_groups` (by posterior mean LFC); myvae by `proba_de`: the same posterior in "
        "scvi-tools' order (the first version's rule).",
        "",
        "| group | marker | myvae | myvae by `proba_de` | scvi-tools | scanpy Wilcoxon |",
        "|---|---|---:|---:|---:|---:|",
    ]
    ranks = report["marker_ranks"]
    methods = ("myvae", "myvae_by_proba_de", "scvi", "wilcoxon")
    for group, genes in MARKERS.items():
        for gene in genes:
            row = [_rank(ranks[method][group][gene]) for method in methods]
            lines.append(f"| {group} | {gene} | " + " | ".join(row) + " |")
    columns = {
        "myvae ∩ Wilcoxon": report["top50_overlap"]["wilcoxon"],
        "myvae ∩ scvi-tools": report["top50_overlap"]["scvi"],
        "myvae by `proba_de` ∩ Wilcoxon": report["top50_overlap_by_proba_de"]["wilcoxon"],
        "myvae by `proba_de` ∩ scvi-tools": report["top50_overlap_by_proba_de"]["scvi"],
        "scvi-tools ∩ Wilcoxon": report["scvi_vs_wilcoxon_top50_overlap"],
    }
    lines += [
        "",
        f"## Overlap of the top {TOP} genes per group",
        "",
        "| group | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for group in report["top50_overlap"]["wilcoxon"]:
        lines.append(f"| {group} | " + " | ".join(f"{c.get(group, float('nan')):.2f}" for c in columns.values()) + " |")
    lines.append("| mean | " + " | ".join(f"{np.mean(list(c.values())):.2f}" for c in columns.values()) + " |")
    seconds = report["de_seconds"]
    lines += [
        "",
        "## Time, all groups against the rest (same run, same data)",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| myvae `tl.rank_genes_groups` | {seconds['myvae']:.1f} |",
        f"| scvi-tools `differential_expression(mode='change')` | {seconds['scvi']:.1f} |",
        f"| ratio scvi-tools / myvae | {seconds['ratio_scvi_over_myvae']:.2f}× |",
        "",
        "## Batch-driven DE calls on the two-batch set",
        "",
    ]
    batch = report["batch"]
    tools = {"myvae": "myvae", "scvi": "scvi-tools"}
    columns = {"no_correction": "batch_correction=False", "batch_correction": "batch_correction=True"}
    lines += [
        "Same cell type, batch 2 against batch 1 (random split: every call is batch-driven); DE calls at FDR 0.05 "
        f"(scvi-tools: an SCVI of the same size trained with the batch key for {batch['scvi_epochs']} epochs, as many "
        "as myvae trained):",
        "",
        "| cell type | "
        + " | ".join(f"{tool}, {column}" for tool in tools.values() for column in columns.values())
        + " |",
        "|---|" + "---:|" * (len(tools) * len(columns)),
    ]
    per_column = [batch[tool]["same_type"][key] for tool in tools for key in columns]
    rows = {cell_type: [calls[cell_type] for calls in per_column] for cell_type in batch["cell_types"]}
    rows["total"] = [sum(calls.values()) for calls in per_column]
    lines += [f"| {row} | " + " | ".join(str(value) for value in values) + " |" for row, values in rows.items()]
    columns["without_batch_effect"] = "same cells without the batch effect"
    lines += [
        "",
        "B cells of batch 1 against CD14+ monocytes of batch 2 (confounded with the batch); calls among the "
        f"{batch['n_null_genes']} genes not DE between the two types in the batch-free data (myvae's `proba_de` < "
        "0.5) are batch-driven, beyond the calls among them that the same comparison makes on the same cells without "
        "the batch effect (each tool's model of their batch-free counts):",
        "",
        "| | " + " | ".join(columns.values()) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for tool, name in tools.items():
        entries = [batch[tool]["confounded"][key] for key in columns]
        lines += [
            f"| {name}: DE calls | " + " | ".join(str(entry["calls"]) for entry in entries) + " |",
            f"| {name}: calls among those genes | "
            + " | ".join(str(entry["calls_among_null_genes"]) for entry in entries)
            + " |",
            f"| {name}: markers called (of {', '.join(CONFOUNDED_MARKERS)}) | "
            + " | ".join(", ".join(entry["markers_called"]) for entry in entries)
            + " |",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/de.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 epochs per model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "de.json")
    parser.add_argument("--report", type=Path, help="only rewrite the Markdown from this JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.report is not None:
        args.report.with_suffix(".md").write_text(markdown_report(json.loads(args.report.read_text())))
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_report(report))
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
