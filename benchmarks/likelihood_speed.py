"""Speed of the negative-binomial likelihood against the formula it replaced, measured in one run.

The stable likelihood (``myvae.module``, precise in float32 up to a huge inverse dispersion; the fused one with its
compiled row loops, as on any CPU) is timed against the textbook formula the package used before (copied below as
it was, for this comparison only): forward and backward of the fused softmax likelihood that training uses, and of
the elementwise one, on one minibatch of PBMC 3k's 2,000 highly variable genes (512 cells, about 7% non-zero
counts, float32, on the CPU; torch and the row loops on ``--threads`` threads). Timings alternate between the two
implementations, and the ratio is the median time of the new one over the median of the old. glibc's allocator is
set as during training (freed memory is kept for reuse).

    python benchmarks/likelihood_speed.py     # writes benchmarks/results/likelihood_speed.{json,md} (under a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from myvae.module import negative_binomial_log_prob, negative_binomial_softmax_log_prob
from myvae.module._sparse import nonzero_entries

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------- the formula before (for comparison only) -------------------------


def _old_log_gamma_terms(x_nz, theta_nz, log_gamma_theta_nz):
    return torch.lgamma(x_nz + theta_nz) - log_gamma_theta_nz - torch.lgamma(x_nz + 1.0)


def _old_digamma_terms(x_nz, theta_nz, digamma_theta_nz):
    return theta_nz * (torch.digamma(x_nz + theta_nz) - digamma_theta_nz)


class _OldLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_mu, log_theta):
        shape = torch.broadcast_shapes(x.shape, log_mu.shape, log_theta.shape)
        x = x.expand(shape)
        theta = log_theta.exp()
        u = log_mu - log_theta
        log_p = F.logsigmoid(u)
        theta_log_1mp = theta * (log_p - u)
        out = torch.addcmul(theta_log_1mp, x, log_p)
        where = torch.nonzero(x, as_tuple=True)
        x_nz = x[where]
        theta_nz = theta.expand(shape)[where]
        out.index_put_(where, _old_log_gamma_terms(x_nz, theta_nz, torch.lgamma(theta_nz)), accumulate=True)
        ctx.save_for_backward(x, u, theta, theta_log_1mp, x_nz, theta_nz, *where)
        ctx.shapes = (log_mu.shape, log_theta.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, u, theta, theta_log_1mp, x_nz, theta_nz, *where = ctx.saved_tensors
        log_mu_shape, log_theta_shape = ctx.shapes
        d_log_mu = x - (x + theta) * torch.sigmoid(u)
        grad_log_mu = (grad * d_log_mu).sum_to_size(log_mu_shape)
        d_log_theta = theta_log_1mp - d_log_mu
        d_log_theta.index_put_(
            tuple(where), _old_digamma_terms(x_nz, theta_nz, torch.digamma(theta_nz)), accumulate=True
        )
        return None, grad_log_mu, (grad * d_log_theta).sum_to_size(log_theta_shape)


class _OldSoftmaxLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, logits, log_library, log_theta):
        rows, cols, counts = nonzero_entries(x)
        log_rho = torch.log_softmax(logits, dim=-1)
        u = log_rho + log_library
        u.sub_(log_theta)
        theta = log_theta.exp()
        log_1mp = F.softplus(u).neg_()
        log_p = u.add_(log_1mp)
        theta_nz = theta[cols]
        at_counts = counts * log_p[rows, cols] + _old_log_gamma_terms(counts, theta_nz, torch.lgamma(theta)[cols])
        out = torch.mv(log_1mp, theta).index_add_(0, rows, at_counts)
        ctx.save_for_backward(log_rho, theta, log_1mp, log_p, rows, cols, counts, theta_nz)
        return out

    @staticmethod
    def backward(ctx, grad):
        log_rho, theta, log_1mp, log_p, rows, cols, counts, theta_nz = ctx.saved_tensors
        p = log_p.exp()
        p_nz = p[rows, cols]
        d_log_mu = p.mul_(theta.neg())
        d_log_mu.index_put_((rows, cols), counts * (1.0 - p_nz), accumulate=True)
        grad_logits = torch.addcmul(d_log_mu, log_rho.exp(), d_log_mu.sum(dim=-1, keepdim=True), value=-1.0)
        grad_logits.mul_(grad.unsqueeze(-1))
        grad_log_theta = theta * torch.mv(log_1mp.T, grad) - torch.mv(d_log_mu.T, grad)
        digamma_terms = _old_digamma_terms(counts, theta_nz, torch.digamma(theta)[cols])
        grad_log_theta.index_add_(0, cols, digamma_terms * grad[rows])
        return None, grad_logits, None, grad_log_theta


# ------------------------------------------------- the benchmark ----------------------------------------------------


def pbmc_minibatch(n_cells: int, seed: int = 0) -> torch.Tensor:
    """Raw counts of ``n_cells`` PBMC 3k cells in its 2,000 highly variable genes, as a sparse CSR tensor."""
    import scanpy as sc

    import myvae as mv
    from myvae.model._datamodule import CSRRows

    adata = mv.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
    sc.pp.filter_cells(adata, min_counts=1)
    rows = torch.randperm(adata.n_obs, generator=torch.Generator().manual_seed(seed))[:n_cells]
    return CSRRows(adata.X)[rows]


def model_like_parameters(counts: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits near the log-normalised counts, the log library sizes and log inverse dispersions from -1 to 6."""
    generator = torch.Generator().manual_seed(seed)
    dense = counts.to_dense()
    logits = (dense + 0.5).log() + 0.3 * torch.randn(dense.shape, generator=generator)
    log_library = dense.sum(-1, keepdim=True).log()
    log_theta = torch.empty(dense.shape[1]).uniform_(-1.0, 6.0, generator=generator)
    return logits, log_library, log_theta


def time_ms(step: Callable[[], None], repeats: int) -> list[float]:
    """Wall-clock milliseconds of each of ``repeats`` calls of ``step``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def compare(cases: dict[str, tuple[Callable[[], None], Callable[[], None]]], repeats: int, rounds: int) -> dict:
    """Median milliseconds of the old and the new step of each case, alternating between them in rounds."""
    results = {}
    for name, (old, new) in cases.items():
        for step in (old, new):  # warm up
            time_ms(step, 3)
        old_ms, new_ms = [], []
        for _ in range(rounds):
            old_ms += time_ms(old, repeats)
            new_ms += time_ms(new, repeats)
        old_median, new_median = statistics.median(old_ms), statistics.median(new_ms)
        results[name] = {
            "old_ms": round(old_median, 3),
            "new_ms": round(new_median, 3),
            "ratio_new_over_old": round(new_median / old_median, 3),
        }
    return results


def cases(counts: torch.Tensor) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Forward and backward steps of the old and the new likelihood, fused softmax and elementwise."""
    logits, log_library, log_theta = model_like_parameters(counts)
    logits.requires_grad_(True)
    log_theta.requires_grad_(True)
    dense = counts.to_dense()
    log_mu = (log_library + torch.log_softmax(logits, -1)).detach().requires_grad_(True)

    def step(function: Callable[..., torch.Tensor], *args: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            out = function(*args)
            weights = torch.ones_like(out)
            torch.autograd.grad(out, [a for a in args if a.requires_grad], weights)

        return run

    return {
        "fused softmax likelihood (training)": (
            step(_OldSoftmaxLogProb.apply, counts, logits, log_library, log_theta),
            step(negative_binomial_softmax_log_prob, counts, logits, log_library, log_theta),
        ),
        "elementwise likelihood": (
            step(_OldLogProb.apply, dense, log_mu, log_theta),
            step(negative_binomial_log_prob, dense, log_mu, log_theta),
        ),
    }


def markdown(meta: dict, results: dict) -> str:
    """The comparison as a Markdown table."""
    lines = [
        f"Forward and backward of the likelihood on {meta['n_cells']} PBMC 3k cells × {meta['n_genes']} genes "
        f"({meta['nonzero_fraction']:.1%} non-zero), float32, CPU, {meta['threads']} thread(s), allocator as in "
        f"training; medians of {meta['timings_each']} timings each, old and new alternating.",
        "",
        "| likelihood | old (ms) | new (ms) | new / old |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | {r['ratio_new_over_old']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Time both implementations and write the JSON and Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "likelihood_speed")
    args = parser.parse_args()
    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))  # the fused likelihood's row loops
    counts = pbmc_minibatch(args.n_cells)
    from myvae.model._allocator import reuse_freed_memory

    with reuse_freed_memory():  # as during training
        results = compare(cases(counts), args.repeats, args.rounds)
    meta = {
        "n_cells": counts.shape[0],
        "n_genes": counts.shape[1],
        "nonzero_fraction": counts.values().numel() / (counts.shape[0] * counts.shape[1]),
        "threads": args.threads,
        "timings_each": args.repeats * args.rounds,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    text = markdown(meta, results)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
