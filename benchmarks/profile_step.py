"""Where a training step of the PyTorch backend spends its time, as a Markdown table.

One step is a minibatch of PBMC 3k's 2,000 highly variable genes (a sparse CSR tensor, as the data module gives
it): forward, backward and the fused Adam update, with glibc's allocator set as during training. The table splits
the step into the fused likelihood (forward and backward), the sparse first layer of the encoder, the dense matrix
products (decoder and the second encoder layers), the optimizer and everything else. The likelihood, the sparse
layer and the optimizer are timed by a clock around their calls, the dense products (single kernels) by
``torch.profiler``; everything else is the step's wall time less those.

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


class _WallClock:
    """Adds up the wall time spent in the ``forward`` and ``backward`` of some autograd Functions, while active.

    The profiler's own accounting misplaces the time of compiled loops that run on several threads (it charged the
    likelihood's backward pass three to four times its wall time), so the parts written as autograd Functions are
    timed with a clock around their calls instead.
    """

    def __init__(self, functions: dict[str, tuple[type, ...]]):
        self.functions = functions
        self.seconds = dict.fromkeys(functions, 0.0)
        self._originals = []

    def __enter__(self):
        for part, classes in self.functions.items():
            for cls in classes:
                for name in ("forward", "backward"):
                    original = cls.__dict__[name]
                    self._originals.append((cls, name, original))
                    setattr(cls, name, staticmethod(self._timed(part, original.__func__)))
        return self

    def __exit__(self, *exc_info):
        for cls, name, original in reversed(self._originals):
            setattr(cls, name, original)
        self._originals.clear()

    def _timed(self, part: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed


def profile_step(batch_size: int, steps: int = 50) -> tuple[float, dict[str, float]]:
    """Milliseconds per step, and milliseconds per step of each part of it."""
    import myvae as mv
    from myvae.model import default_learning_rate
    from myvae.module import _likelihood, _sparse

    torch.manual_seed(0)
    counts = _pbmc_minibatch(batch_size)
    module = mv.module.TorchVAEModule(counts.shape[1])
    optimizer = torch.optim.Adam(module.parameters(), lr=default_learning_rate(batch_size), fused=True)
    optimizer_seconds = 0.0

    def step() -> None:
        nonlocal optimizer_seconds
        _, _, output = module({REGISTRY_KEYS.X_KEY: counts})
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        start = time.perf_counter()
        optimizer.step()
        optimizer_seconds += time.perf_counter() - start

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_ms = (time.perf_counter() - start) / steps * 1e3

    likelihood = "fused NB likelihood with softmax, forward and backward"
    sparse = "sparse first encoder layer (embedding_bag), forward and backward"
    functions = {
        likelihood: (_likelihood._RowLoopsNegativeBinomialSoftmaxLogProb, _likelihood._NegativeBinomialSoftmaxLogProb),
        sparse: (_sparse._SparseLinear,),
    }
    optimizer_seconds = 0.0
    with _WallClock(functions) as clock:
        for _ in range(steps):
            step()
    parts = {part: seconds / steps * 1e3 for part, seconds in clock.seconds.items()}
    parts["optimizer (fused Adam)"] = optimizer_seconds / steps * 1e3

    # the dense products are single kernels, which the profiler times well (on their own, not inside the parts above)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    totals = {event.key: event for event in profiler.key_averages()}
    dense = sum(totals[name].self_cpu_time_total for name in ("aten::mm", "aten::addmm") if name in totals)
    parts["dense matrix products (decoder, second encoder layers)"] = dense / 1e3 / steps
    parts["everything else (encoder activations, KL, autograd, allocation)"] = step_ms - sum(parts.values())
    return step_ms, parts


def markdown(batch_size: int, step_ms: float, parts: dict[str, float]) -> str:
    """The profile as a Markdown table (each part's wall time per step, and its share of the step)."""
    lines = [
        f"A step at batch {batch_size} took {step_ms:.1f} ms ({batch_size / step_ms * 1e3:,.0f} cells/s) "
        f"outside the profiler.",
        "",
        "| part of the step | ms per step | share |",
        "|---|---:|---:|",
    ]
    for name, ms in parts.items():
        lines.append(f"| {name} | {ms:.1f} | {ms / step_ms:.0%} |")
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
