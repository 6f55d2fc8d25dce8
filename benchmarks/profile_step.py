"""Where a training step of the PyTorch backend spends its time, from ``torch.profiler``, as a Markdown table.

One step is a minibatch of PBMC 3k's 2,000 highly variable genes (a sparse CSR tensor, as the data module gives
it): forward, backward and the fused Adam update, with glibc's allocator set as during training. The table splits
the step into the fused likelihood (forward and backward), the sparse first layer of the encoder, the dense matrix
products (decoder and the second encoder layers), the optimizer and everything else.

    python benchmarks/profile_step.py      # writes benchmarks/results/train_step_profile.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scvi import REGISTRY_KEYS

ROOT = Path(__file__).resolve().parents[1]


def _pbmc_minibatch(batch_size: int) -> torch.Tensor:
    import scanpy as sc

    import myvae as mv
    from myvae.model._datamodule import CSRRows

    adata = mv.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
    sc.pp.filter_cells(adata, min_counts=1)
    rows = torch.randperm(adata.n_obs, generator=torch.Generator().manual_seed(0))[:batch_size]
    return CSRRows(adata.X)[rows]


def profile_step(batch_size: int, steps: int = 20) -> tuple[float, dict[str, float]]:
    """Milliseconds per step, and milliseconds per step of each part of it."""
    import myvae as mv
    from myvae.model import default_learning_rate

    torch.manual_seed(0)
    counts = _pbmc_minibatch(batch_size)
    module = mv.module.TorchVAEModule(counts.shape[1])
    optimizer = torch.optim.Adam(module.parameters(), lr=default_learning_rate(batch_size), fused=True)

    def step() -> None:
        _, _, output = module({REGISTRY_KEYS.X_KEY: counts})
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_ms = (time.perf_counter() - start) / steps * 1e3

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    totals = {event.key: event for event in profiler.key_averages()}

    def total_ms(*names: str) -> float:
        return sum(totals[name].cpu_time_total for name in names if name in totals) / 1e3 / steps

    def self_ms(*names: str) -> float:
        return sum(totals[name].self_cpu_time_total for name in names if name in totals) / 1e3 / steps

    parts = {
        "fused NB likelihood with softmax, forward and backward": total_ms(
            "_RowLoopsNegativeBinomialSoftmaxLogProb",  # on the CPU
            "_RowLoopsNegativeBinomialSoftmaxLogProbBackward",
            "_NegativeBinomialSoftmaxLogProb",  # elsewhere
            "_NegativeBinomialSoftmaxLogProbBackward",
        ),
        "sparse first encoder layer (embedding_bag), forward and backward": total_ms(
            "_SparseLinear", "_SparseLinearBackward"
        ),
        "dense matrix products (decoder, second encoder layers)": self_ms("aten::mm", "aten::addmm"),
        "optimizer (fused Adam)": self_ms("aten::_fused_adam_"),
    }
    profiled_ms = sum(event.self_cpu_time_total for event in totals.values()) / 1e3 / steps
    parts["everything else (encoder activations, KL, autograd, allocation)"] = profiled_ms - sum(parts.values())
    return step_ms, parts


def markdown(batch_size: int, step_ms: float, parts: dict[str, float]) -> str:
    """The profile as a Markdown table (shares of the profiled time, scaled to the unprofiled step time)."""
    profiled = sum(parts.values())
    lines = [
        f"A step at batch {batch_size} took {step_ms:.1f} ms ({batch_size / step_ms * 1e3:,.0f} cells/s) "
        f"outside the profiler.",
        "",
        "| part of the step | ms per step | share |",
        "|---|---:|---:|",
    ]
    for name, ms in parts.items():
        lines.append(f"| {name} | {ms / profiled * step_ms:.1f} | {ms / profiled:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Profile a step and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step_profile.md")
    args = parser.parse_args()
    from myvae.model._allocator import reuse_freed_memory

    with reuse_freed_memory():  # as during training
        step_ms, parts = profile_step(args.batch_size)
    text = markdown(args.batch_size, step_ms, parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
