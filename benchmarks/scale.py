"""Training from disk at scale: peak memory and throughput of out-of-core training against the in-memory path.

Synthetic negative-binomial counts (2,000 genes, eight cell states, about 8% non-zeros, written a chunk of cells at
a time so that writing needs little memory) are stored as ``.h5ad`` (CSR) and as zarr. For each size, in fresh
processes, ``mv.tl.myvae`` trains one epoch (no early stopping) and embeds every cell

- from disk: the h5ad opened with ``backed="r"``, and the zarr store read lazily (a dask array);
- in memory: the h5ad read whole, at every size (its peak memory shows where the in-memory path stops).

It reports training cells/s (the epoch alone), the wall time of the whole call, the peak resident memory (VmHWM)
of each process, and the ratio of out-of-core to in-memory throughput; it writes JSON and a Markdown table.

    python benchmarks/scale.py           # 100k, 300k and 1M cells (about 25 minutes on 2 cores, 5 GB of disk)
    python benchmarks/scale.py --quick   # 100k cells only (about 3 minutes)

``--repeats N`` runs the modes N times in turn and keeps each one's fastest whole call (with its own peak memory;
the JSON lists every repeat's), as ``train_throughput.py`` does: on a shared machine single calls drift by 10%.
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
N_GENES = 2000
WRITE_CHUNK = 50_000
SIZES = (100_000, 300_000, 1_000_000)
MODES = ("h5ad_backed", "zarr_lazy", "in_memory")


# ---------------------------------------------------------------- data ----------------------------------------------


def synthetic_chunks(n_cells: int, seed: int = 0):
    """Negative-binomial counts, ``WRITE_CHUNK`` cells at a time: eight states, log-normal depths, θ = 5."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    profiles = rng.dirichlet(np.full(N_GENES, 0.08), size=8)
    for start in range(0, n_cells, WRITE_CHUNK):
        n = min(WRITE_CHUNK, n_cells - start)
        states = rng.integers(0, len(profiles), size=n)
        depth = np.exp(rng.normal(np.log(700), 0.4, size=n))
        mean = depth[:, None] * profiles[states]
        theta = 5.0
        counts = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)
        counts[np.arange(n), rng.integers(0, N_GENES, size=n)] += 1  # no cell without counts
        yield sparse.csr_matrix(counts)


def write_counts(n_cells: int, folder: Path) -> dict[str, Path]:
    """Write the counts as h5ad (CSR) and zarr, appending chunk after chunk."""
    import anndata as ad
    import h5py
    import pandas as pd
    import zarr

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{g}" for g in range(N_GENES)])
    paths = {"h5ad": folder / f"counts_{n_cells}.h5ad", "zarr": folder / f"counts_{n_cells}.zarr"}
    with h5py.File(paths["h5ad"], "w") as h5:
        store = zarr.open_group(paths["zarr"], mode="w")
        for group in (h5, store):
            ad.io.write_elem(group, "obs", obs)
            ad.io.write_elem(group, "var", var)
        for i, chunk in enumerate(synthetic_chunks(n_cells)):
            for group in (h5, store):
                if i == 0:
                    ad.io.write_elem(group, "X", chunk)
                else:
                    ad.io.sparse_dataset(group["X"]).append(chunk)
    return paths


# ---------------------------------------------------------------- one run, in its own process -----------------------


def open_counts(mode: str, paths: dict[str, str]):
    """The data as the mode reads it: backed h5ad, a dask array over zarr, or the h5ad read whole."""
    import anndata as ad
    import zarr

    if mode == "h5ad_backed":
        return ad.read_h5ad(paths["h5ad"], backed="r")
    if mode == "zarr_lazy":
        store = zarr.open_group(paths["zarr"], mode="r")
        obs = ad.io.read_elem(store["obs"])
        var = ad.io.read_elem(store["var"])
        return ad.AnnData(X=ad.experimental.read_elem_lazy(store["X"]), obs=obs, var=var)
    return ad.read_h5ad(paths["h5ad"])


def run_one(mode: str, paths: dict[str, str]) -> dict:
    """Set up and train one epoch with ``mode``; seconds, epoch cells/s and peak RSS."""
    from lightning.pytorch import Callback
    from train_throughput import peak_rss_mib

    import myvae as mv

    class EpochClock(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.start

    start = time.perf_counter()
    adata = open_counts(mode, paths)
    mv.pp.setup_counts(adata)
    setup_seconds = time.perf_counter() - start
    clock = EpochClock()
    model = mv.tl.myvae(
        adata,
        max_epochs=1,
        early_stopping=False,
        progress=False,
        accelerator="cpu",
        return_model=True,
        callbacks=[clock],
    )
    seconds = time.perf_counter() - start
    embedding = adata.obsm["X_myvae"]
    return {
        "seconds": seconds,
        "setup_seconds": setup_seconds,
        "epoch_seconds": clock.seconds,
        "train_cells_per_s": len(model.train_indices) / clock.seconds,
        "peak_rss_mib": peak_rss_mib(),
        "embedding_finite": bool(np.isfinite(embedding).all()),
        "embedding_shape": list(embedding.shape),
    }


def _run_in_subprocess(mode: str, paths: dict[str, Path]) -> dict:
    command = [sys.executable, __file__, "--worker", mode, json.dumps({k: str(v) for k, v in paths.items()})]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        raise RuntimeError(f"{mode} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _fastest_of(paths: dict[str, Path], repeats: int) -> dict:
    """Run every mode ``repeats`` times, the modes in turn (so a change of load hits them alike); keep the fastest.

    Each kept result lists the whole-call times and peak memory of all its repeats.
    """
    runs = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            runs[mode].append(_run_in_subprocess(mode, paths))
    entry = {}
    for mode, results in runs.items():
        entry[mode] = min(results, key=lambda result: result["seconds"])
        entry[mode]["seconds_repeats"] = [result["seconds"] for result in results]
        entry[mode]["peak_rss_mib_repeats"] = [result["peak_rss_mib"] for result in results]
    return entry


# ---------------------------------------------------------------- driver -------------------------------------------

# Issue #18, item 5, measured before its changes at 300,000 cells, one epoch, warm page cache: the whole call took
# 45.4 s at 1.11 GiB peak RSS from a backed h5ad against 51.5 s at 1.94 GiB in memory. Neither ratio may drop.
ISSUE_300K_CALL_RATIO = 51.5 / 45.4
ISSUE_300K_MEMORY_RATIO = 1.94 / 1.11


def markdown_report(report: dict) -> str:
    """The results and the targets as Markdown tables (included by the docs)."""
    lines = [
        f"Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
        f"{report['machine']['memory_gib']:.0f} GiB.",
        "",
        "| cells | mode | training cells/s | call seconds | peak RSS (MiB) | training vs in memory "
        "| whole call vs in memory | peak RSS, in memory ÷ this |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n_cells, entry in report["sizes"].items():
        in_memory = entry["in_memory"]
        for mode in MODES:
            result = entry[mode]
            lines.append(
                f"| {int(n_cells):,} | {mode} | {result['train_cells_per_s']:,.0f} | {result['seconds']:.1f} | "
                f"{result['peak_rss_mib']:,.0f} | {result['train_cells_per_s'] / in_memory['train_cells_per_s']:.2f} "
                f"| {in_memory['seconds'] / result['seconds']:.2f} | "
                f"{in_memory['peak_rss_mib'] / result['peak_rss_mib']:.2f} |"
            )
    lines += ["", "| target | measured | met |", "|---|---|:---:|"]
    for target in report["targets"]:
        lines.append(f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def targets(report: dict) -> list[dict]:
    """The issue's targets, each with what this run measured."""
    sizes = report["sizes"]
    out_of_core_peaks = {
        f"{int(n):,} {mode}": entry[mode]["peak_rss_mib"]
        for n, entry in sizes.items()
        for mode in ("h5ad_backed", "zarr_lazy")
    }
    highest = max(out_of_core_peaks.values())
    rows = [
        {
            "target": "peak RSS of out-of-core training under 2 GiB at every size",
            "measured": f"highest {highest:,.0f} MiB ({max(out_of_core_peaks, key=out_of_core_peaks.get)})",
            "met": highest < 2048,
        }
    ]
    if "300000" in sizes:
        entry = sizes["300000"]
        backed, in_memory = entry["h5ad_backed"], entry["in_memory"]
        call_ratio = in_memory["seconds"] / backed["seconds"]
        memory_ratio = in_memory["peak_rss_mib"] / backed["peak_rss_mib"]
        rows.append(
            {
                "target": "whole call from a backed h5ad at 300k cells, time and peak RSS against in memory, "
                f"at least issue #18's {ISSUE_300K_CALL_RATIO:.2f}× and {ISSUE_300K_MEMORY_RATIO:.2f}×",
                "measured": f"{call_ratio:.2f}× faster, {memory_ratio:.2f}× less memory "
                f"({backed['seconds']:.1f} s at {backed['peak_rss_mib']:,.0f} MiB against "
                f"{in_memory['seconds']:.1f} s at {in_memory['peak_rss_mib']:,.0f} MiB)",
                "met": call_ratio >= ISSUE_300K_CALL_RATIO and memory_ratio >= ISSUE_300K_MEMORY_RATIO,
            }
        )
    if "100000" in sizes:
        entry = sizes["100000"]
        ratio = (
            min(entry[mode]["train_cells_per_s"] for mode in ("h5ad_backed", "zarr_lazy"))
            / entry["in_memory"]["train_cells_per_s"]
        )
        rows.append(
            {
                "target": "out-of-core throughput ≥ 50% of in memory at 100k cells",
                "measured": f"{ratio:.0%} (the slower of h5ad and zarr)",
                "met": ratio >= 0.5,
            }
        )
    return rows


def _machine() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": memory,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k cells only")
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of cells (default 100k, 300k and 1M)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--workdir", type=Path, help="where to write the data (default: a temporary folder)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the modes this many times, in turn, and keep each one's fastest whole call",
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_one(args.worker[0], json.loads(args.worker[1]))))
        return 0

    sizes = args.sizes or ((100_000,) if args.quick else SIZES)
    report = {"machine": _machine(), "quick": args.quick, "n_genes": N_GENES, "sizes": {}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        for n_cells in sizes:
            start = time.perf_counter()
            paths = write_counts(n_cells, Path(folder))
            os.sync()  # flush the written files first, so that no mode pays for the write-back
            written = time.perf_counter() - start
            entry = _fastest_of(paths, args.repeats)
            entry["write_seconds"] = written
            report["sizes"][str(n_cells)] = entry
            shown = "  ".join(
                f"{mode} {entry[mode]['train_cells_per_s']:,.0f} cells/s {entry[mode]['peak_rss_mib']:,.0f} MiB"
                for mode in MODES
            )
            print(f"{n_cells:>9,} cells (written in {written:.0f} s): {shown}", flush=True)
            for path in paths.values():
                subprocess.run(["rm", "-rf", str(path)], check=True)
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_report(report))
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
