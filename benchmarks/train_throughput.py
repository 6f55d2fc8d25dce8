"""Training throughput of myvae against scvi-tools, measured in one run on the same data.

For each data set and method this trains for a fixed number of epochs in a fresh process and records training
cells per second, the wall time to come within 1% of the method's own final held-out ELBO, that final held-out
ELBO per cell (the same 10% of cells for every method) and the peak resident memory. It prints the ratios against
scvi-tools' ``SCVI`` and against the reference path (myvae's PyTorch module trained through scvi-tools' default
data path), the fraction of the matmul-only ceiling that the PyTorch backend reaches, and writes everything as
JSON.

    python benchmarks/train_throughput.py            # full run (20-35 minutes on 2 cores; `make bench`)
    python benchmarks/train_throughput.py --quick    # PBMC 3k only, few epochs (under 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("myvae_torch", "myvae_pyro", "scvi_SCVI", "reference_path")
N_LATENT, N_HIDDEN = 10, 128
ACCELERATOR_VARIABLE = "MYVAE_BENCH_ACCELERATOR"
"""Environment variable through which the driver tells its worker processes the Lightning accelerator."""


# ---------------------------------------------------------------- data ----------------------------------------------


def _pbmc_hvg():
    import scanpy as sc

    import myvae as mv

    adata = mv.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
    sc.pp.filter_cells(adata, min_counts=1)
    return adata


def _resampled(adata, n_cells: int, keep: float = 0.8, seed: int = 0):
    """Draw cells with replacement and thin every count binomially, so the sparsity stays that of real data."""
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, adata.n_obs, size=n_cells)
    counts = sparse.csr_matrix(adata.X[rows], dtype=np.float32)
    counts.data = rng.binomial(counts.data.astype(np.int64), keep).astype(np.float32)
    counts.eliminate_zeros()
    resampled = ad.AnnData(counts, var=adata.var[[]].copy())
    resampled.obs_names = [f"cell{i}" for i in range(n_cells)]
    return resampled[np.asarray(counts.sum(axis=1)).ravel() > 0].copy()


def _mouse_brain(data_dir: Path):
    import anndata as ad

    adata = ad.read_h5ad(data_dir / "mouse_brain_10k_subset.h5ad")
    adata.obs_names_make_unique()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    return adata[totals > 0].copy()


def prepare_datasets(quick: bool, data_dir: Path, folder: Path) -> dict[str, Path]:
    """Write each benchmark data set to ``folder`` and return their paths."""
    pbmc = _pbmc_hvg()
    datasets = {"pbmc3k_hvg": pbmc}
    if not quick:
        if (data_dir / "mouse_brain_10k_subset.h5ad").exists():
            datasets["mouse_brain_10k"] = _mouse_brain(data_dir)
        datasets["pbmc_resampled_20k"] = _resampled(pbmc, 20_000)
        datasets["pbmc_resampled_100k"] = _resampled(pbmc, 100_000)
    paths = {}
    for name, adata in datasets.items():
        paths[name] = folder / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    return paths


# ------------------------------------------------------------- one run (in a worker process) -----------------------


def _epoch_clock():
    from lightning.pytorch.callbacks import Callback

    class EpochClock(Callback):
        """Wall time at the end of each validation epoch, measured from the start of training."""

        def __init__(self):
            self.times = []

        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.times.append(time.perf_counter() - self.start)

    return EpochClock()


def _train(method: str, adata, max_epochs: int | None, batch_size: int | None, clock) -> object:
    import scvi
    from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin

    import myvae as mv

    accelerator = os.environ.get(ACCELERATOR_VARIABLE, "cpu")
    common = {
        "accelerator": accelerator,
        "callbacks": [clock],
        "check_val_every_n_epoch": 1,
        "enable_progress_bar": False,
    }
    if method.startswith("myvae"):
        mv.MyVAE.setup_anndata(adata)
        model = mv.MyVAE(adata, n_latent=N_LATENT, n_hidden=N_HIDDEN, backend=method.split("_")[1])
        kwargs = {
            "early_stopping": max_epochs is None,
            "progress": False,
            "accelerator": accelerator,
            "callbacks": [clock],
        }
        if batch_size:
            kwargs["batch_size"] = batch_size
        model.train(max_epochs, **kwargs)
        return model
    if method == "scvi_SCVI":
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, n_layers=1, n_hidden=N_HIDDEN, n_latent=N_LATENT)
        model.train(max_epochs=max_epochs, train_size=0.9, batch_size=batch_size or 128, **common)
        return model

    class ReferencePath(VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
        """myvae's PyTorch module through scvi-tools' default DataSplitter and TrainingPlan."""

        _module_cls = mv.module.TorchVAEModule

        def __init__(self, adata):
            super().__init__(adata)
            self.module = self._module_cls(self.summary_stats.n_vars, n_latent=N_LATENT, n_hidden=N_HIDDEN)
            self.init_params_ = self._get_init_params(locals())

        @classmethod
        def setup_anndata(cls, adata):
            mv.MyVAE.setup_anndata.__func__(cls, adata)

    ReferencePath.setup_anndata(adata)
    model = ReferencePath(adata)
    model.train(
        max_epochs=max_epochs or 400,
        train_size=0.9,
        batch_size=batch_size or 128,
        plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": None},
        **common,
    )
    return model


def run_one(path: Path, method: str, max_epochs: int | None, batch_size: int | None) -> dict:
    """Train one method on one data set; runs in its own process so that peak memory is its own."""
    import anndata as ad
    import scvi

    adata = ad.read_h5ad(path)
    scvi.settings.seed = 0
    clock = _epoch_clock()
    start = time.perf_counter()
    model = _train(method, adata, max_epochs, batch_size, clock)
    seconds = time.perf_counter() - start
    heldout = -np.asarray(model.history["elbo_validation"], dtype=float).ravel()  # ELBO per cell, higher is better
    epochs = len(heldout)
    final = heldout[-1]
    within = np.flatnonzero(heldout >= final - 0.01 * abs(final))[0]
    n_train = int(np.ceil(0.9 * adata.n_obs))
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "epochs": epochs,
        "train_seconds": seconds,
        "cells_per_second": n_train * epochs / clock.times[-1],
        "seconds_to_within_1pct": clock.times[within],
        "final_heldout_elbo_per_cell": float(final),
        "peak_rss_mib": peak_rss_mib(),
        "heldout_elbo_per_epoch": heldout.tolist(),
        "seconds_at_epoch_end": clock.times,
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux ``VmHWM``; ``ru_maxrss`` elsewhere), in MiB.

    ``ru_maxrss`` survives ``exec`` on Linux, so a worker started from a large parent would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


# ---------------------------------------------------------------- matmul ceiling -----------------------------------


def matmul_ceiling(n_genes: int, batch_size: int, device: str = "cpu", repeats: int = 30) -> float:
    """Cells/s of the model's matrix multiplications alone (forward and backward), the same sizes as the model."""
    import torch

    torch.manual_seed(0)
    x = torch.rand(batch_size, n_genes, device=device)
    shapes = [
        (n_genes, N_HIDDEN),  # mean encoder, first layer
        (N_HIDDEN, N_LATENT),
        (n_genes, N_HIDDEN),  # variance encoder, first layer
        (N_HIDDEN, N_LATENT),
        (N_LATENT, N_HIDDEN),  # decoder
        (N_HIDDEN, n_genes),
    ]
    weights = [torch.randn(*shape, device=device, requires_grad=True) for shape in shapes]

    def step():
        mean = (x @ weights[0]) @ weights[1]
        var = (x @ weights[2]) @ weights[3]
        out = ((mean + var) @ weights[4]) @ weights[5]
        out.sum().backward()

    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    for _ in range(5):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize()
    return batch_size * repeats / (time.perf_counter() - start)


# ---------------------------------------------------------------- driver -------------------------------------------


def _worker(args) -> None:
    result = run_one(Path(args.worker_data), args.worker_method, args.max_epochs, args.batch_size)
    print("RESULT " + json.dumps(result))


def _run_in_subprocess(path: Path, method: str, max_epochs: int | None, batch_size: int | None) -> dict:
    command = [sys.executable, __file__, "--worker-data", str(path), "--worker-method", method]
    if max_epochs is not None:
        command += ["--max-epochs", str(max_epochs)]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        raise RuntimeError(f"{method} on {path.name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _epochs_for(n_cells: int, quick: bool) -> int:
    if quick:
        return 8
    return 60 if n_cells <= 5_000 else 30 if n_cells <= 20_000 else 3


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="PBMC 3k only, few epochs (under two minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-epochs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator for every method (cpu, gpu)")
    parser.add_argument(
        "--report", type=Path, default=None, help="only rewrite the Markdown tables from this JSON result file"
    )
    parser.add_argument("--worker-data", help=argparse.SUPPRESS)
    parser.add_argument("--worker-method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_data:
        _worker(args)
        return 0
    if args.report:
        _write_markdown(json.loads(args.report.read_text()), args.report)
        return 0

    import torch

    os.environ[ACCELERATOR_VARIABLE] = args.accelerator
    on_gpu = args.accelerator in ("gpu", "cuda")
    report = {
        "accelerator": args.accelerator,
        "gpu": torch.cuda.get_device_name() if on_gpu else None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "quick": args.quick,
        "datasets": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        paths = prepare_datasets(args.quick, args.data_dir, Path(folder))
        for name, path in paths.items():
            import anndata as ad

            n_cells, n_genes = ad.read_h5ad(path, backed="r").shape
            epochs = _epochs_for(n_cells, args.quick)
            results = {method: _run_in_subprocess(path, method, epochs, None) for method in args.methods}
            if not args.quick and name == "pbmc3k_hvg":  # each with its own defaults, early stopping included
                results["myvae_torch_defaults"] = _run_in_subprocess(path, "myvae_torch", None, None)
                results["scvi_SCVI_defaults"] = _run_in_subprocess(path, "scvi_SCVI", None, None)
            _add_ratios(results)
            from myvae.model import DEFAULT_BATCH_SIZE

            ceiling = matmul_ceiling(n_genes, DEFAULT_BATCH_SIZE, device="cuda" if on_gpu else "cpu")
            entry = {"n_cells": n_cells, "n_genes": n_genes, "epochs": epochs, "results": results}
            entry["matmul_ceiling_cells_per_second"] = ceiling
            if "myvae_torch" in results:
                entry["torch_fraction_of_matmul_ceiling"] = results["myvae_torch"]["cells_per_second"] / ceiling
            report["datasets"][name] = entry
            _print_dataset(name, entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    _write_markdown(report, args.out)
    return 0


def _add_ratios(results: dict) -> None:
    for baseline, label in (("scvi_SCVI", "vs_scvi"), ("reference_path", "vs_reference")):
        if baseline not in results:
            continue
        base = results[baseline]
        for result in results.values():
            result[f"speed_{label}"] = result["cells_per_second"] / base["cells_per_second"]
            result[f"heldout_elbo_gap_{label}"] = (
                result["final_heldout_elbo_per_cell"] - base["final_heldout_elbo_per_cell"]
            ) / abs(base["final_heldout_elbo_per_cell"])
    if "myvae_torch_defaults" in results and "scvi_SCVI_defaults" in results:
        ours, theirs = results["myvae_torch_defaults"], results["scvi_SCVI_defaults"]
        ours["time_to_1pct_vs_scvi_defaults"] = ours["seconds_to_within_1pct"] / theirs["seconds_to_within_1pct"]
        # the same bar for both: the first epoch at which myvae's held-out ELBO reaches SCVI's final one
        reached = np.flatnonzero(np.asarray(ours["heldout_elbo_per_epoch"]) >= theirs["final_heldout_elbo_per_cell"])
        if reached.size:
            seconds = ours["seconds_at_epoch_end"][reached[0]]
            ours["seconds_to_scvi_defaults_final_elbo"] = seconds
            ours["time_to_scvi_final_vs_scvi_to_1pct"] = seconds / theirs["seconds_to_within_1pct"]


def _print_dataset(name: str, entry: dict) -> None:
    print(f"\n{name}: {entry['n_cells']} cells × {entry['n_genes']} genes, {entry['epochs']} epochs")
    header = (
        f"{'method':<22}{'cells/s':>10}{'vs SCVI':>9}{'vs ref':>8}{'to 1% (s)':>11}{'held-out ELBO':>15}{'RSS MiB':>9}"
    )
    print(header)
    for method, result in entry["results"].items():
        print(
            f"{method:<22}{result['cells_per_second']:>10.0f}{result.get('speed_vs_scvi', float('nan')):>9.2f}"
            f"{result.get('speed_vs_reference', float('nan')):>8.2f}{result['seconds_to_within_1pct']:>11.1f}"
            f"{result['final_heldout_elbo_per_cell']:>15.2f}{result['peak_rss_mib']:>9.0f}"
        )
    defaults = entry["results"].get("myvae_torch_defaults", {})
    if "time_to_1pct_vs_scvi_defaults" in defaults:
        print(
            f"defaults: myvae reaches within 1% of its final held-out ELBO in "
            f"{defaults['time_to_1pct_vs_scvi_defaults']:.2f}x the time SCVI takes to come within 1% of its own"
        )
    if "seconds_to_scvi_defaults_final_elbo" in defaults:
        print(
            f"defaults: myvae reaches SCVI's final held-out ELBO after "
            f"{defaults['seconds_to_scvi_defaults_final_elbo']:.1f} s "
            f"({defaults['time_to_scvi_final_vs_scvi_to_1pct']:.2f}x SCVI's time to within 1% of it)"
        )
    if "torch_fraction_of_matmul_ceiling" in entry:
        print(
            f"matmul-only ceiling: {entry['matmul_ceiling_cells_per_second']:.0f} cells/s; the torch backend reaches "
            f"{entry['torch_fraction_of_matmul_ceiling']:.0%} of it"
        )


def _write_markdown(report: dict, json_path: Path) -> None:
    tables = json_path.with_suffix(".md")
    targets = json_path.with_name(json_path.stem + "_targets.md")
    tables.write_text(markdown_report(report))
    targets.write_text(targets_report(report))
    print(f"wrote {tables} and {targets}")


def targets_report(report: dict) -> str:
    """The performance targets, each with the figure this run measured and whether it is met, as Markdown."""
    rows = []

    def add(target: str, dataset: str, measured: float | None, fmt: str, met: bool | None) -> None:
        # fmt is a format specification followed by a unit, e.g. ".2f×"
        spec, unit = fmt.rstrip("×%"), fmt[len(fmt.rstrip("×%")) :]
        shown = "not measured" if measured is None else format(measured, spec) + unit
        verdict = "—" if met is None else "yes" if met else "**no**"
        rows.append(f"| {target} | {dataset} | {shown} | {verdict} |")

    datasets = report["datasets"]
    for name in ("pbmc_resampled_20k", "pbmc_resampled_100k"):
        torch_result = datasets.get(name, {}).get("results", {}).get("myvae_torch", {})
        speed = torch_result.get("speed_vs_scvi")
        add("torch backend ≥ 4× SCVI cells/s", name, speed, ".2f×", None if speed is None else speed >= 4)
        gap = torch_result.get("heldout_elbo_gap_vs_reference")
        add(
            "torch held-out ELBO no more than 0.5% below the reference path",
            name,
            None if gap is None else 100 * gap,
            "+.2f%",
            None if gap is None else gap >= -0.005,
        )
    for name, entry in datasets.items():
        results = entry["results"]
        if "myvae_pyro" in results and "myvae_torch" in results:
            ratio = results["myvae_pyro"]["cells_per_second"] / results["myvae_torch"]["cells_per_second"]
            add("Pyro backend ≥ 0.7× the torch backend's cells/s", name, ratio, ".2f×", ratio >= 0.7)
    defaults = datasets.get("pbmc3k_hvg", {}).get("results", {}).get("myvae_torch_defaults", {})
    ratio = defaults.get("time_to_1pct_vs_scvi_defaults")
    add(
        "defaults: time to within 1% of own final held-out ELBO ≤ ¼ of SCVI's",
        "pbmc3k_hvg",
        ratio,
        ".2f×",
        None if ratio is None else ratio <= 0.25,
    )
    ratio = defaults.get("time_to_scvi_final_vs_scvi_to_1pct")
    add(
        "defaults: time to reach SCVI's final held-out ELBO, over SCVI's time to within 1%",
        "pbmc3k_hvg",
        ratio,
        ".2f×",
        None,
    )
    for name, entry in datasets.items():
        fraction = entry.get("torch_fraction_of_matmul_ceiling")
        add(
            "fraction of the matmul-only ceiling reached (reported)",
            name,
            None if fraction is None else 100 * fraction,
            ".0f%",
            None,
        )
    header = ["| target | data set | measured | met |", "|---|---|---:|:---:|"]
    return "\n".join(header + rows) + "\n"


def markdown_report(report: dict) -> str:
    """The benchmark's figures as Markdown tables, one per data set (included by the docs' performance page)."""
    machine = report["machine"]
    lines = [
        f"Machine: {machine['processor']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"Python {machine['python']}, {machine['platform']}"
        + (f"; every method trained on a {report['gpu']} GPU." if report.get("gpu") else "; every method on the CPU."),
        "",
    ]
    for name, entry in report["datasets"].items():
        lines += [
            f"**{name}**: {entry['n_cells']:,} cells × {entry['n_genes']:,} genes, {entry['epochs']} epochs; "
            f"matmul-only ceiling {entry['matmul_ceiling_cells_per_second']:,.0f} cells/s"
            + (
                f", reached to {entry['torch_fraction_of_matmul_ceiling']:.0%} by the torch backend."
                if "torch_fraction_of_matmul_ceiling" in entry
                else "."
            ),
            "",
            "| method | cells/s | × SCVI | × reference | s to within 1% | final held-out ELBO | peak RSS (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method, result in entry["results"].items():
            lines.append(
                f"| {method} | {result['cells_per_second']:,.0f} | {result.get('speed_vs_scvi', float('nan')):.2f} "
                f"| {result.get('speed_vs_reference', float('nan')):.2f} | {result['seconds_to_within_1pct']:.1f} "
                f"| {result['final_heldout_elbo_per_cell']:.2f} | {result['peak_rss_mib']:,.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
