"""Training speed of myvae against scvi-tools' SCVI, measured in one run on the same data: per epoch and per call.

Every method trains for the same fixed number of epochs (no early stopping) in a fresh process, on the same data:

- ``myvae_torch`` and ``myvae_pyro``: the whole ``mv.tl.myvae`` call (checks, training, embedding, record);
- ``scvi_defaults``: ``scvi.model.SCVI(n_layers=1)`` with scvi-tools' defaults (zero-inflated NB, dropout 0.1, batch
  norm, KL warm-up over 400 epochs), what its users run;
- ``scvi_same_model``: ``SCVI`` configured as myvae's model (NB likelihood, no dropout, no batch or layer norm, no KL
  warm-up) and trained on the same schedule (its held-out ELBO computed after every epoch, as ``tl.myvae`` does; by
  default SCVI validates only with early stopping);
- ``reference_path`` (only on request, ``--methods``): myvae's PyTorch module through scvi-tools' default data path.

For SCVI the whole call is ``setup_anndata`` + ``SCVI(...)`` + ``train`` + ``get_latent_representation``.
Each method runs in a fresh process that imports scanpy, scvi-tools and myvae (as a scanpy session has), starts
Numba's compiler (as a scanpy session has too, once it has run ``highly_variable_genes``, ``normalize_total`` or
``neighbors``; the seconds it took are recorded as ``numba_start_seconds``, what a first call in a bare Python process
pays once more), reads the data and runs a full garbage collection before its clock starts. Each run
records the wall time of the whole call, the training time (Lightning's first to last training epoch, validation
included), training cells per second (per epoch), the fixed cost (whole call minus training), the held-out ELBO per
cell after the last epoch (the same 10% of cells for every method) and the peak resident memory of its process. The
``myvae_torch`` process then measures the matmul-only ceiling (the model's dense products alone), right after its
call, so that the fraction of it that the torch backend reaches compares two figures taken under the same load. The
driver adds the ratios against both SCVI configurations, the Pyro/torch ratio and that fraction, and writes JSON and
Markdown (tables, and the targets of issue #18).

    python benchmarks/train_throughput.py            # 20,000 cells x 2,000 genes at 4 and 8 epochs (`make bench`)
    python benchmarks/train_throughput.py --quick    # PBMC 3k at 2 and 4 epochs, a few minutes; writes *_quick.*
"""

from __future__ import annotations

import argparse
import gc
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
METHODS = (
    "myvae_torch",
    "myvae_pyro",
    "scvi_defaults",
    "scvi_same_model",
    "reference_path",
)
DEFAULT_METHODS = METHODS[:4]
SCVI_METHODS = {
    "scvi_defaults": "SCVI's defaults",
    "scvi_same_model": "same-model SCVI",
}
SAME_MODEL_KWARGS = {
    "gene_likelihood": "nb",
    "dropout_rate": 0.0,
    "use_batch_norm": "none",
    "use_layer_norm": "none",
}
"""What turns scvi-tools' SCVI into myvae's model (with ``SAME_MODEL_PLAN_KWARGS``)."""
SAME_MODEL_PLAN_KWARGS = {"n_epochs_kl_warmup": None}
"""The training plan's part of it: no KL warm-up."""
SAME_SCHEDULE_KWARGS = {"check_val_every_n_epoch": 1}
"""What makes the same-model SCVI do myvae's work per epoch: score the held-out cells after every epoch."""
N_LATENT, N_HIDDEN = 10, 128
ACCELERATOR_VARIABLE = "MYVAE_BENCH_ACCELERATOR"
"""Environment variable through which the driver tells its worker processes the Lightning accelerator."""
FULL_EPOCHS, QUICK_EPOCHS = (4, 8), (2, 4)


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


def prepare_datasets(quick: bool, folder: Path) -> dict[str, Path]:
    """Write each benchmark data set to ``folder`` and return their paths."""
    pbmc = _pbmc_hvg()
    datasets = {"pbmc3k_hvg": pbmc} if quick else {"pbmc_resampled_20k": _resampled(pbmc, 20_000)}
    paths = {}
    for name, adata in datasets.items():
        paths[name] = folder / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    return paths


# ------------------------------------------------------------- one run (in a worker process) -----------------------


def _training_clock():
    from lightning.pytorch.callbacks import Callback

    class TrainingClock(Callback):
        """Wall time of training (first training epoch to the end of the last, validation included)."""

        def __init__(self):
            self.start = self.end = None

        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.end = time.perf_counter()

        @property
        def seconds(self) -> float:
            return self.end - self.start

    return TrainingClock()


def _call_myvae(adata, backend: str, epochs: int, accelerator: str, clock) -> float:
    """The whole ``mv.tl.myvae`` call; returns its held-out ELBO per cell after the last epoch."""
    import myvae as mv

    mv.tl.myvae(
        adata,
        backend=backend,
        max_epochs=epochs,
        early_stopping=False,
        random_state=0,
        accelerator=accelerator,
        progress=False,
        callbacks=[clock],
    )
    return float(np.asarray(adata.uns["myvae"]["history"]["elbo_validation"], dtype=float).ravel()[-1])


def _call_scvi(adata, method: str, epochs: int, accelerator: str, clock):
    """The whole SCVI call (setup, model, train, latent representation); returns the model."""
    import scvi

    same_model = method == "scvi_same_model"
    model_kwargs = SAME_MODEL_KWARGS if same_model else {}
    plan_kwargs = SAME_MODEL_PLAN_KWARGS if same_model else None
    train_kwargs = SAME_SCHEDULE_KWARGS if same_model else {}
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_layers=1, n_hidden=N_HIDDEN, n_latent=N_LATENT, **model_kwargs)
    model.train(
        max_epochs=epochs,
        train_size=0.9,
        accelerator=accelerator,
        callbacks=[clock],
        enable_progress_bar=False,
        plan_kwargs=plan_kwargs,
        **train_kwargs,
    )
    adata.obsm["X_scVI"] = model.get_latent_representation()
    return model


def _call_reference_path(adata, epochs: int, accelerator: str, clock):
    """Train myvae's PyTorch module through scvi-tools' default DataSplitter, AnnDataLoader and TrainingPlan."""
    from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin

    import myvae as mv

    class ReferencePath(VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
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
        max_epochs=epochs,
        train_size=0.9,
        batch_size=128,
        accelerator=accelerator,
        callbacks=[clock],
        enable_progress_bar=False,
        plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": None},
    )
    adata.obsm["X_reference"] = model.get_latent_representation()
    return model


def start_numba() -> float:
    """Start Numba's compiler for the CPU as a scanpy session's preprocessing has; returns the seconds it took.

    Numba's first compilation, or first load of a cached function, in a process initialises its typing and target
    contexts (about 0.12 s); scanpy's preprocessing functions compile with Numba, so in a session that ran them this is
    paid before any tool is called.
    """
    from numba.core.registry import cpu_target

    start = time.perf_counter()
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()
    return time.perf_counter() - start


def run_one(path: Path, method: str, epochs: int) -> dict:
    """Time one whole call of one method on one data set; runs in its own process so that peak memory is its own."""
    import anndata as ad
    import scanpy  # noqa: F401  (every method runs in a scanpy session, where scanpy is imported)
    import scvi

    if method.startswith("myvae"):
        import myvae  # noqa: F401  (imported before the clock starts, as scvi-tools is)
    accelerator = os.environ.get(ACCELERATOR_VARIABLE, "cpu")
    numba_start = start_numba()
    adata = ad.read_h5ad(path)
    scvi.settings.seed = 0
    # a full garbage collection of the imported libraries' objects (about 0.3 s) would otherwise land in whichever
    # call's allocations happen to trigger it; as timeit does, keep the collector's pauses out of the timing
    gc.collect()
    clock = _training_clock()
    load_at_start = _load_average()
    start = time.perf_counter()
    if method.startswith("myvae"):
        heldout = _call_myvae(adata, method.split("_")[1], epochs, accelerator, clock)
        seconds = time.perf_counter() - start
    else:
        if method == "reference_path":
            model = _call_reference_path(adata, epochs, accelerator, clock)
        else:
            model = _call_scvi(adata, method, epochs, accelerator, clock)
        seconds = time.perf_counter() - start
        # after the clock stops: the held-out ELBO on the validation cells (the same ones myvae holds out)
        model.module.eval()
        heldout = float(model.get_elbo(indices=model.validation_indices))
    n_train = int(np.ceil(0.9 * adata.n_obs))
    ceiling = {}
    if method == "myvae_torch":  # after the clock: the ceiling of this process, under the load its call ran under
        from myvae.model import DEFAULT_BATCH_SIZE

        device = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
        ceiling["matmul_ceiling_cells_per_second"] = matmul_ceiling(adata.n_vars, DEFAULT_BATCH_SIZE, device=device)
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "epochs": epochs,
        "call_seconds": seconds,
        "train_seconds": clock.seconds,
        "fixed_seconds": seconds - clock.seconds,
        "numba_start_seconds": numba_start,
        "cells_per_second": n_train * epochs / clock.seconds,
        "call_cells_per_second": n_train * epochs / seconds,
        "heldout_elbo_per_cell": heldout,
        "peak_rss_mib": peak_rss_mib(),
        "load_average": [load_at_start, _load_average()],
        **ceiling,
    }


def _load_average() -> float | None:
    """The machine's one-minute load average (``None`` where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


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
    result = run_one(Path(args.worker_data), args.worker_method, args.worker_epochs)
    print("RESULT " + json.dumps(result))


def _run_in_subprocess(path: Path, method: str, epochs: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker-data",
        str(path),
        "--worker-method",
        method,
    ]
    command += ["--worker-epochs", str(epochs)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        raise RuntimeError(f"{method} on {path.name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _fastest_of(path: Path, methods: list[str], epochs: int, repeats: int) -> dict:
    """Run every method ``repeats`` times, the methods in turn (so a change of load hits them alike); keep the fastest.

    Each kept result lists the whole-call times of all its repeats in ``call_seconds_repeats``.
    """
    runs = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            runs[method].append(_run_in_subprocess(path, method, epochs))
    results = {}
    for method, results_of_method in runs.items():
        results[method] = min(results_of_method, key=lambda result: result["call_seconds"])
        results[method]["call_seconds_repeats"] = [result["call_seconds"] for result in results_of_method]
    return results


def _cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (``None`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        # the matmul-only ceiling depends on the vector instructions torch's kernels use (AVX2, AVX512, ...): a
        # ceiling fraction compares like with like only on the same kind of CPU
        "cpu_model": _cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("myvae", "scvi-tools", "torch", "pyro-ppl", "lightning")}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="PBMC 3k at 2 and 4 epochs (a few minutes)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default: benchmarks/results/...)",
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--epochs", nargs="+", type=int, default=None, help="epoch counts to compare at")
    parser.add_argument(
        "--accelerator",
        default="cpu",
        help="Lightning accelerator for every method (cpu, gpu)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the methods this many times, in turn, and keep each one's fastest",
    )
    parser.add_argument(
        "--note",
        default="",
        help="a line about the conditions of the run, kept in the results",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="only rewrite the Markdown tables from this JSON result file",
    )
    parser.add_argument("--worker-data", help=argparse.SUPPRESS)
    parser.add_argument("--worker-method", help=argparse.SUPPRESS)
    parser.add_argument("--worker-epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_data:
        _worker(args)
        return 0
    if args.report:
        _write_markdown(json.loads(args.report.read_text()), args.report)
        return 0
    out = args.out or ROOT / "benchmarks" / "results" / f"train_throughput{'_quick' if args.quick else ''}.json"
    epoch_counts = args.epochs or (QUICK_EPOCHS if args.quick else FULL_EPOCHS)

    import torch

    from myvae.model import DEFAULT_BATCH_SIZE

    os.environ[ACCELERATOR_VARIABLE] = args.accelerator
    on_gpu = args.accelerator in ("gpu", "cuda")
    report = {
        "accelerator": args.accelerator,
        "gpu": torch.cuda.get_device_name() if on_gpu else None,
        "machine": _machine(),
        "versions": _versions(),
        "note": args.note,
        "quick": args.quick,
        "datasets": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for name, path in prepare_datasets(args.quick, Path(folder)).items():
            import anndata as ad

            n_cells, n_genes = ad.read_h5ad(path, backed="r").shape
            device = "cuda" if on_gpu else "cpu"
            ceiling = matmul_ceiling(n_genes, DEFAULT_BATCH_SIZE, device=device)
            entry = {
                "n_cells": n_cells,
                "n_genes": n_genes,
                "matmul_ceiling_cells_per_second": ceiling,
                "runs": {},
            }
            report["datasets"][name] = entry
            for epochs in epoch_counts:
                results = _fastest_of(path, args.methods, epochs, args.repeats)
                entry["runs"][str(epochs)] = {
                    "results": results,
                    **_ratios(results, ceiling),
                }
                _save(report, out)  # after every epoch count: a run cut short keeps what it measured
            # measured before and after the runs: the load on a shared machine moves it
            entry["matmul_ceiling_cells_per_second"] = max(
                ceiling, matmul_ceiling(n_genes, DEFAULT_BATCH_SIZE, device=device)
            )
            for run in entry["runs"].values():
                run.update(_ratios(run["results"], entry["matmul_ceiling_cells_per_second"]))
            _print_dataset(name, entry)
    _save(report, out)
    return 0


def _numba_start(result: dict) -> str:
    seconds = result.get("numba_start_seconds")
    return "not started before the clock" if seconds is None else f"{seconds:.2f}"


def _save(report: dict, out: Path) -> None:
    report["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    _write_markdown(report, out)


def _ratios(results: dict, ceiling: float) -> dict:
    """Ratios between the methods of one run: myvae over each SCVI configuration, Pyro over torch, the ceiling."""
    ratios = {}
    torch_result = results.get("myvae_torch")
    for scvi_method in SCVI_METHODS:
        if scvi_method not in results:
            continue
        base = results[scvi_method]
        for method in ("myvae_torch", "myvae_pyro"):
            if method in results:
                ratios[f"{method}_over_{scvi_method}"] = {
                    "per_epoch": results[method]["cells_per_second"] / base["cells_per_second"],
                    "whole_call": base["call_seconds"] / results[method]["call_seconds"],
                }
    if torch_result and "myvae_pyro" in results:
        ratios["pyro_over_torch"] = {
            "per_epoch": results["myvae_pyro"]["cells_per_second"] / torch_result["cells_per_second"],
            "whole_call": torch_result["call_seconds"] / results["myvae_pyro"]["call_seconds"],
        }
    if torch_result:
        # the ceiling its own process measured (same load); the run's, for results that predate it
        own_ceiling = torch_result.get("matmul_ceiling_cells_per_second", ceiling)
        ratios["torch_fraction_of_matmul_ceiling"] = torch_result["cells_per_second"] / own_ceiling
    return ratios


def _ceiling_of(run: dict, entry: dict) -> float:
    """The matmul-only ceiling a run's torch fraction is measured against: its torch process's, else the run's."""
    torch_result = run["results"].get("myvae_torch", {})
    return torch_result.get("matmul_ceiling_cells_per_second", entry["matmul_ceiling_cells_per_second"])


def _print_dataset(name: str, entry: dict) -> None:
    print(f"\n{name}: {entry['n_cells']} cells × {entry['n_genes']} genes")
    for epochs, run in entry["runs"].items():
        print(f"{epochs} epochs")
        print(
            f"{'method':<18}{'call (s)':>10}{'train (s)':>11}{'fixed (s)':>11}{'cells/s':>10}"
            f"{'held-out ELBO':>15}{'RSS MiB':>9}"
        )
        for method, result in run["results"].items():
            print(
                f"{method:<18}{result['call_seconds']:>10.1f}{result['train_seconds']:>11.1f}"
                f"{result['fixed_seconds']:>11.2f}{result['cells_per_second']:>10.0f}"
                f"{result['heldout_elbo_per_cell']:>15.2f}{result['peak_rss_mib']:>9.0f}"
            )
        for key, value in run.items():
            if isinstance(value, dict) and "per_epoch" in value:
                print(f"  {key}: {value['per_epoch']:.2f}x per epoch, {value['whole_call']:.2f}x whole call")
        if "torch_fraction_of_matmul_ceiling" in run:
            print(f"  torch backend at {run['torch_fraction_of_matmul_ceiling']:.0%} of the matmul-only ceiling")


def _write_markdown(report: dict, json_path: Path) -> None:
    tables = json_path.with_suffix(".md")
    targets = json_path.with_name(json_path.stem + "_targets.md")
    tables.write_text(markdown_report(report))
    targets.write_text(targets_report(report))
    print(f"wrote {tables} and {targets}")


def targets_report(report: dict) -> str:
    """The targets of issue #18, each with the figure this run measured and whether it is met, as Markdown."""
    rows = []

    def add(target: str, where: str, measured: float | None, shown: str, met: bool | None) -> None:
        verdict = "—" if met is None else "yes" if met else "**no**"
        rows.append(f"| {target} | {where} | {'not measured' if measured is None else shown} | {verdict} |")

    for name, entry in report["datasets"].items():
        for epochs, run in entry["runs"].items():
            where = f"{name}, {epochs} epochs"
            for scvi_method, bound in (("scvi_defaults", 5), ("scvi_same_model", 4)):
                ratio = run.get(f"myvae_torch_over_{scvi_method}", {}).get("whole_call")
                target = f"whole `tl.myvae` call (torch) ≥ {bound}× {SCVI_METHODS[scvi_method]}"
                add(
                    target,
                    where,
                    ratio,
                    f"{ratio or 0:.2f}×",
                    None if ratio is None else ratio >= bound,
                )
            fraction = run.get("torch_fraction_of_matmul_ceiling")
            add(
                "per epoch (torch) ≥ 80% of the matmul-only ceiling",
                where,
                fraction,
                f"{fraction or 0:.0%}",
                None if fraction is None else fraction >= 0.8,
            )
            torch_result = run["results"].get("myvae_torch", {})
            fixed, numba_start = torch_result.get("fixed_seconds"), torch_result.get("numba_start_seconds")
            target = "fixed cost of a `tl.myvae` call (torch; whole call minus training) ≤ 0.3 s"
            once = "" if numba_start is None else f" (+ {numba_start:.2f} s once per process: Numba's start)"
            add(
                target,
                where,
                fixed,
                f"{fixed or 0:.2f} s{once}",
                None if fixed is None else fixed <= 0.3,
            )
            for scope in ("per_epoch", "whole_call"):
                ratio = run.get("pyro_over_torch", {}).get(scope)
                target = f"Pyro ≥ 0.85× torch ({scope.replace('_', ' ')})"
                add(
                    target,
                    where,
                    ratio,
                    f"{ratio or 0:.2f}×",
                    None if ratio is None else ratio >= 0.85,
                )
    header = ["| target | data, epochs | measured | met |", "|---|---|---|:---:|"]
    note = [report["note"], ""] if report.get("note") else []
    return "\n".join(note + header + rows) + "\n"


def _load(result: dict) -> str:
    load = result.get("load_average")
    return "—" if not load or None in load else f"{load[0]:.1f} → {load[1]:.1f}"


def _cpu_description(machine: dict) -> str:
    """The processor, with its model and the vector instructions torch's kernels use where the run recorded them."""
    details = [
        machine.get("cpu_model"),
        machine.get("torch_cpu_capability") and f"torch kernels: {machine['torch_cpu_capability']}",
    ]
    details = [detail for detail in details if detail]
    return machine["processor"] + (f" ({'; '.join(details)})" if details else "")


def markdown_report(report: dict) -> str:
    """The benchmark's figures as Markdown tables, one per data set and epoch count (included by the docs)."""
    machine = report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in report.get("versions", {}).items())
    load = machine.get("load_average_at_start")
    lines = [
        f"Machine: {_cpu_description(machine)}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"Python {machine['python']}, {machine['platform']}"
        + (f"; every method trained on a {report['gpu']} GPU." if report.get("gpu") else "; every method on the CPU.")
        + (f" {versions}." if versions else ""),
        "",
    ]
    if load:
        end = machine.get("load_average_at_end") or load
        lines += [
            f"Load average (1 min) at the start and end of the run: {load[0]:.1f}, {end[0]:.1f}.",
            "",
        ]
    if report.get("note"):
        lines += [report["note"], ""]
    for name, entry in report["datasets"].items():
        for epochs, run in entry["runs"].items():
            lines += [
                f"**{name}**: {entry['n_cells']:,} cells × {entry['n_genes']:,} genes, {epochs} epochs; "
                f"matmul-only ceiling {_ceiling_of(run, entry):,.0f} cells/s"
                + (
                    f", reached to {run['torch_fraction_of_matmul_ceiling']:.0%} by the torch backend per epoch."
                    if "torch_fraction_of_matmul_ceiling" in run
                    else "."
                ),
                "",
                "| method | whole call (s) | training (s) | fixed cost (s) | cells/s per epoch | held-out ELBO "
                "| peak RSS (MiB) | load (start → end) | Numba's start, before the clock (s) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for method, result in run["results"].items():
                lines.append(
                    f"| {method} | {result['call_seconds']:.1f} | {result['train_seconds']:.1f} "
                    f"| {result['fixed_seconds']:.2f} | {result['cells_per_second']:,.0f} "
                    f"| {result['heldout_elbo_per_cell']:.2f} | {result['peak_rss_mib']:,.0f} | {_load(result)} "
                    f"| {_numba_start(result)} |"
                )
            lines += [
                "",
                "| ratio | per epoch (cells/s) | whole call (time) |",
                "|---|---:|---:|",
            ]
            for key, value in run.items():
                if isinstance(value, dict) and "per_epoch" in value:
                    label = key.replace("_over_", " ÷ ")
                    lines.append(f"| {label} | {value['per_epoch']:.2f}× | {value['whole_call']:.2f}× |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
