"""How close to the matmul-only ceiling the torch backend could get if parts of its step cost nothing.

Issue #18 asks for 80% of the matmul-only ceiling per epoch (``train_throughput.py`` measures both). This script
asks what that target needs on the CPU it runs on: it times the same whole ``tl.myvae`` call as
``train_throughput.py`` (20,000 resampled PBMC cells × 2,000 genes, fixed epochs, the ceiling measured right after
the call in the same process) with parts of the model's step replaced by stand-ins that cost almost nothing:

- ``as_shipped``: the torch backend as it is;
- ``free_likelihood``: the fused negative-binomial likelihood (softmax, log-probability and both gradients)
  replaced by the mean of the squared logits, one pass forward and one backward, so the decoder's products and
  everything around them still run;
- ``free_likelihood_and_first_layer``: also the encoders' sparse first layer replaced by its bias (the weights
  still get a gradient, so Adam updates as many parameters).

The stand-ins train nothing useful; only their speed is read. The variants run in turn, each in a fresh process,
``--repeats`` times; each variant's runs are all kept (the machine's ceiling moves between runs) and summarised by
the median of their ceiling fractions. Writes ``benchmarks/results/ceiling_bounds.json`` and ``.md``.

    python benchmarks/ceiling_bounds.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import train_throughput

VARIANTS = ("as_shipped", "free_likelihood", "free_likelihood_and_first_layer")
RESULTS = train_throughput.ROOT / "benchmarks" / "results"


def _free_likelihood() -> None:
    """Make the row-loop likelihood a mean of squared logits (what the stand-in costs is one pass each way)."""
    from myvae.module import _likelihood

    def stand_in(x, logits, log_library, log_theta, wants_gradient):
        return -logits.square().mean(dim=-1) + 0.0 * log_theta.sum()

    _likelihood._RowLoopsNegativeBinomialSoftmaxLogProb.apply = staticmethod(stand_in)


def _free_first_layer() -> None:
    """Make the encoders' first layer its bias, with a (zero) gradient for its weights so that Adam's work stays."""
    from myvae.module import _networks

    def stand_in(x, *layers):
        import torch

        bias = torch.cat([layer.bias for layer in layers])
        untouched = sum(layer.weight_t.sum() for layer in layers) * 0.0
        return bias.expand(x.shape[0], -1) + untouched

    _networks._first_layer = stand_in


def _worker(data: Path, variant: str, epochs: int) -> None:
    if variant != "as_shipped":
        _free_likelihood()
    if variant == "free_likelihood_and_first_layer":
        _free_first_layer()
    result = train_throughput.run_one(data, "myvae_torch", epochs)
    result["fraction_of_ceiling"] = result["cells_per_second"] / result["matmul_ceiling_cells_per_second"]
    print("RESULT " + json.dumps(result))


def _run(data: Path, variant: str, epochs: int) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--data", str(data), "--epochs", str(epochs)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        raise RuntimeError(f"{variant} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def markdown(report: dict) -> str:
    """The results as a table: per variant, the median fraction of the ceiling and every run's figures."""
    lines = [
        f"{report['epochs']} epochs of {report['n_cells']:,} cells × {report['n_genes']:,} genes, batch 512, "
        f"{report['repeats']} runs per variant in turn; CPU: {report['machine']['cpu_model'] or 'unknown'} "
        f"(torch kernels: {report['machine']['torch_cpu_capability']}).",
        "",
        "| variant | fraction of the ceiling (median) | runs: cells/s per epoch / ceiling cells/s |",
        "|---|---:|---|",
    ]
    for variant, runs in report["runs"].items():
        median = statistics.median(run["fraction_of_ceiling"] for run in runs)
        figures = ", ".join(
            f"{run['cells_per_second']:,.0f} / {run['matmul_ceiling_cells_per_second']:,.0f}" for run in runs
        )
        lines.append(f"| `{variant}` | {median:.0%} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the variants in turn and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, the variants in turn")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "ceiling_bounds.json")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.data, args.worker, args.epochs)
        return 0
    runs = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        (data,) = train_throughput.prepare_datasets(quick=False, folder=Path(folder)).values()
        for _ in range(args.repeats):
            for variant in VARIANTS:
                runs[variant].append(_run(data, variant, args.epochs))
                print(variant, f"{runs[variant][-1]['fraction_of_ceiling']:.0%}", flush=True)
    first = runs["as_shipped"][0]
    report = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "n_cells": first["n_cells"],
        "n_genes": first["n_genes"],
        "machine": train_throughput._machine(),
        "versions": train_throughput._versions(),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
