"""The negative-binomial likelihood in single precision, against double-precision and arbitrary-precision references.

The grid covers counts from 0 to 10^4, log means from -2 to 9 and log inverse dispersions from -2 to 20 (near-Poisson
genes). Errors are scaled by max(1, |reference|); the target is 1e-3.
"""

import math

import mpmath
import numpy as np
import pytest
import torch

from myvae.module import negative_binomial_log_prob, negative_binomial_softmax_log_prob

TARGET = 1e-3
LOG_MU = torch.linspace(-2.0, 9.0, 23, dtype=torch.float64)
LOG_THETA = torch.linspace(-2.0, 20.0, 45, dtype=torch.float64)
COUNTS = torch.cat(
    [
        torch.arange(11, dtype=torch.float64),
        torch.logspace(math.log10(12), 4, 40, dtype=torch.float64).round(),
        LOG_MU.exp().round(),  # counts at the mean, where the terms of the textbook formula cancel most
    ]
).unique()


def textbook_log_prob(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """The formula as written in textbooks (and in this package before), exact enough in double precision."""
    theta = log_theta.exp()
    log_theta_plus_mu = torch.logaddexp(log_theta, log_mu)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (log_theta - log_theta_plus_mu)
        + x * (log_mu - log_theta_plus_mu)
    )


def textbook_softmax_log_prob(x, logits, log_library, log_theta):
    return textbook_log_prob(x, log_library + torch.log_softmax(logits, -1), log_theta).sum(-1)


def value_and_gradients(
    function, inputs: dict, wrt: tuple[str, ...], dtype: torch.dtype, weights=None, device: torch.device | str = "cpu"
):
    """The value and its gradients in the inputs named by ``wrt``, computed on ``device``, returned in double
    precision on the CPU."""
    inputs = {name: t.detach().to(device, dtype).requires_grad_(name in wrt) for name, t in inputs.items()}
    value = function(**inputs)
    weights = torch.ones_like(value) if weights is None else weights.to(device, dtype)
    gradients = torch.autograd.grad(value, [inputs[name] for name in wrt], weights)
    return [t.detach().cpu().double() for t in (value, *gradients)]


def scaled_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return ((got - reference).abs() / reference.abs().clamp(min=1.0)).max().item()


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every combination of a count, a log mean and a log inverse dispersion, flattened."""
    x, log_mu, log_theta = torch.meshgrid(COUNTS, LOG_MU, LOG_THETA, indexing="ij")
    return x.reshape(-1), log_mu.reshape(-1), log_theta.reshape(-1)


def elementwise(x, log_mu, log_theta):
    return negative_binomial_log_prob(x, log_mu, log_theta)


def textbook(x, log_mu, log_theta):
    return textbook_log_prob(x, log_mu, log_theta)


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda t: t.reshape(1, -1), id="one inverse dispersion per gene"),
        pytest.param(lambda t: t.reshape(-1, 1), id="one inverse dispersion per entry"),
    ],
)
def test_float32_log_prob_and_gradients_match_the_float64_reference_on_the_grid(layout, device):
    x, log_mu, log_theta = grid()
    inputs = {"x": layout(x), "log_mu": layout(log_mu)}
    inputs["log_theta"] = log_theta if inputs["x"].shape[0] == 1 else layout(log_theta)
    wrt = ("log_mu", "log_theta")
    reference = value_and_gradients(textbook, inputs, wrt, torch.float64)
    got = value_and_gradients(elementwise, inputs, wrt, torch.float32, device=device)
    errors = {name: scaled_error(g, r) for name, g, r in zip(("value", *wrt), got, reference, strict=True)}
    assert max(errors.values()) < TARGET, errors


def test_the_textbook_formula_loses_its_precision_in_float32_on_the_same_grid():
    """The grid is hard: what the package computed before is off by far more than the target there."""
    x, log_mu, log_theta = grid()
    inputs = {"x": x, "log_mu": log_mu, "log_theta": log_theta}
    reference = value_and_gradients(textbook, inputs, ("log_theta",), torch.float64)
    got = value_and_gradients(textbook, inputs, ("log_theta",), torch.float32)
    assert scaled_error(got[0], reference[0]) > 100 * TARGET
    assert scaled_error(got[1], reference[1]) > 100 * TARGET


def one_cell_of_every_combination():
    """A single cell whose genes are all combinations of count, log mean and log inverse dispersion.

    Its library is about 10^8, so log_softmax(logits) + log_library is rounded to about 1e-6 in float32, which moves
    the gradient in the logits near a count at a mean of e^9 by up to 1e-2: that is the softmax's rounding, not
    the likelihood's, and this layout checks the value and the gradient in log theta only.
    """
    x, log_mu, log_theta = grid()
    return {
        "x": x.reshape(1, -1),
        "logits": log_mu.reshape(1, -1),  # log_softmax(logits) + log_library = log_mu
        "log_library": torch.logsumexp(log_mu, 0).reshape(1, 1),
        "log_theta": log_theta,
    }


def cells_of_count_and_mean():
    """One cell per count and log mean, its genes the log inverse dispersions."""
    x, log_mu = torch.meshgrid(COUNTS, LOG_MU, indexing="ij")
    n_genes = len(LOG_THETA)
    return {
        "x": x.reshape(-1, 1).expand(-1, n_genes),
        "logits": log_mu.reshape(-1, 1).expand(-1, n_genes),
        "log_library": log_mu.reshape(-1, 1) + math.log(n_genes),
        "log_theta": LOG_THETA,
    }


# Where a count equals a mean of e^9 (8103) in a cell whose genes span theta from e^-2 to e^20, the gradient in a
# logit is about 0 but the sum of three terms of 4,000 to 8,000 whose float32 spacing is 5e-4; there the error reaches
# 1.6e-3, three spacings (the textbook formula: 4.8e-3). Everywhere else on the grid it stays below 1e-3.
LOGITS_GRADIENT_TOLERANCE = 2e-3


@pytest.mark.usefixtures("fused_likelihood_path")
@pytest.mark.parametrize(
    ("layout", "wrt", "tolerance"),
    [
        pytest.param(one_cell_of_every_combination, ("log_theta",), TARGET, id="one cell of every combination"),
        pytest.param(cells_of_count_and_mean, ("logits",), LOGITS_GRADIENT_TOLERANCE, id="cells of a count and mean"),
    ],
)
def test_float32_softmax_log_prob_and_gradients_match_the_float64_reference(layout, wrt, tolerance, device):
    inputs = layout()
    reference = value_and_gradients(textbook_softmax_log_prob, inputs, wrt, torch.float64)
    got = value_and_gradients(negative_binomial_softmax_log_prob, inputs, wrt, torch.float32, device=device)
    errors = {name: scaled_error(g, r) for name, g, r in zip(("value", *wrt), got, reference, strict=True)}
    assert errors["value"] < TARGET, errors
    assert errors[wrt[0]] < tolerance, errors


@pytest.mark.usefixtures("fused_likelihood_path")
def test_float32_softmax_gradients_where_one_gene_dominates_each_cell(device):
    """Every cell's genes span the means, so the largest takes most of the library; one cell per count."""
    n_genes = len(LOG_MU)
    inputs = {
        "x": COUNTS.reshape(-1, 1).expand(-1, n_genes),
        "logits": LOG_MU.expand(len(COUNTS), -1),
        "log_library": torch.logsumexp(LOG_MU, 0).expand(len(COUNTS), 1),
    }
    errors = []
    for log_theta in LOG_THETA[::4]:  # one inverse dispersion for all genes
        inputs["log_theta"] = log_theta.expand(n_genes)
        reference = value_and_gradients(textbook_softmax_log_prob, inputs, ("logits",), torch.float64)
        got = value_and_gradients(negative_binomial_softmax_log_prob, inputs, ("logits",), torch.float32, device=device)
        errors += [scaled_error(g, r) for g, r in zip(got, reference, strict=True)]
    assert max(errors) < TARGET


# A few of the hardest points, where even the double-precision textbook formula is worth checking: count, log mean,
# log inverse dispersion.
CORNERS = [
    (10_000, 9.0, 20.0),
    (8103, 9.0, 20.0),
    (449, 9.0, 20.0),
    (1, -2.0, 20.0),
    (10_000, -2.0, -2.0),
    (3, 1.0, 1.0),
]


def arbitrary_precision(x: float, log_mu: float, log_theta: float) -> tuple[float, float, float]:
    """Log-probability and its derivatives in log mu and log theta, with 50 significant digits."""
    with mpmath.workdps(50):
        x, log_mu, log_theta = (mpmath.mpf(v) for v in (x, log_mu, log_theta))
        theta, mu = mpmath.exp(log_theta), mpmath.exp(log_mu)
        value = (
            mpmath.loggamma(x + theta)
            - mpmath.loggamma(theta)
            - mpmath.loggamma(x + 1)
            + theta * mpmath.log(theta / (theta + mu))
            + x * mpmath.log(mu / (theta + mu))
        )
        d_log_mu = x - (x + theta) * mu / (theta + mu)
        d_log_theta = theta * (
            mpmath.digamma(x + theta) - mpmath.digamma(theta) + mpmath.log(theta / (theta + mu)) + 1
        ) - theta * (x + theta) / (theta + mu)
        return float(value), float(d_log_mu), float(d_log_theta)


@pytest.mark.parametrize(("x", "log_mu", "log_theta"), CORNERS)
def test_the_float64_reference_and_the_float64_likelihood_agree_with_arbitrary_precision(x, log_mu, log_theta):
    inputs = {"x": torch.tensor([float(x)]), "log_mu": torch.tensor([log_mu]), "log_theta": torch.tensor([log_theta])}
    wrt = ("log_mu", "log_theta")
    exact = torch.tensor(arbitrary_precision(x, log_mu, log_theta), dtype=torch.float64)
    reference = torch.cat(value_and_gradients(textbook, inputs, wrt, torch.float64))
    ours = torch.cat(value_and_gradients(elementwise, inputs, wrt, torch.float64))
    assert scaled_error(reference, exact) < 1e-5  # far below the target: a sound reference
    assert scaled_error(ours, exact) < 1e-9


@pytest.mark.parametrize("log_theta_range", [(-2.0, 2.0), (8.0, 20.0)])
def test_gradcheck_of_the_elementwise_likelihood(log_theta_range):
    generator = torch.Generator().manual_seed(0)
    x = torch.tensor([[0.0, 1.0, 3.0, 40.0, 1000.0, 0.0]] * 4, dtype=torch.float64)
    log_mu = torch.empty(4, 6, dtype=torch.float64).uniform_(-2.0, 9.0, generator=generator).requires_grad_()
    log_theta = torch.empty(6, dtype=torch.float64).uniform_(*log_theta_range, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, t: negative_binomial_log_prob(x, m, t), (log_mu, log_theta))
    # one inverse dispersion per entry takes the general path
    log_theta_full = log_theta.detach().expand(4, 6).clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda m, t: negative_binomial_log_prob(x, m, t), (log_mu, log_theta_full))


@pytest.mark.usefixtures("fused_likelihood_path")
@pytest.mark.parametrize("log_theta_range", [(-2.0, 2.0), (8.0, 20.0)])
def test_gradcheck_of_the_softmax_likelihood(log_theta_range):
    generator = torch.Generator().manual_seed(1)
    x = torch.tensor([[0.0, 1.0, 3.0, 40.0, 1000.0, 0.0], [2.0, 0.0, 0.0, 0.0, 5.0, 9000.0]], dtype=torch.float64)
    logits = torch.empty(2, 6, dtype=torch.float64).uniform_(-3.0, 3.0, generator=generator).requires_grad_()
    log_library = torch.tensor([[7.0], [9.2]], dtype=torch.float64)
    log_theta = torch.empty(6, dtype=torch.float64).uniform_(*log_theta_range, generator=generator).requires_grad_()
    for counts in (x, x.to_sparse_csr()):
        assert torch.autograd.gradcheck(
            lambda f, t, counts=counts: negative_binomial_softmax_log_prob(counts, f, log_library, t),
            (logits, log_theta),
        )


@pytest.mark.usefixtures("fused_likelihood_path")
def test_zero_counts_with_large_means_keep_the_log_theta_gradient_precise(device):
    """A zero count where the mean exceeds 256 takes the refined path; its neighbours the direct one."""
    log_mu = torch.tensor([[9.0, 5.0, 5.6, 0.0]], dtype=torch.float64)  # 8103, 148, 270, 1
    inputs = {"x": torch.zeros(1, 4, dtype=torch.float64), "log_mu": log_mu, "log_theta": torch.full((4,), 20.0)}
    wrt = ("log_mu", "log_theta")
    reference = value_and_gradients(textbook, inputs, wrt, torch.float64)
    got = value_and_gradients(elementwise, inputs, wrt, torch.float32, device=device)
    for g, r in zip(got, reference, strict=True):
        assert scaled_error(g, r) < 1e-5
    softmax_inputs = {
        "x": inputs["x"],
        "logits": log_mu,
        "log_library": torch.logsumexp(log_mu, -1, keepdim=True),
        "log_theta": inputs["log_theta"],
    }
    wrt = ("logits", "log_theta")
    reference = value_and_gradients(textbook_softmax_log_prob, softmax_inputs, wrt, torch.float64)
    got = value_and_gradients(negative_binomial_softmax_log_prob, softmax_inputs, wrt, torch.float32, device=device)
    for g, r in zip(got, reference, strict=True):
        assert scaled_error(g, r) < 1e-5


@pytest.mark.usefixtures("fused_likelihood_path")
def test_sparse_and_dense_counts_give_the_same_result_including_empty_cells(device):
    generator = torch.Generator().manual_seed(2)
    x = torch.poisson(torch.rand(6, 30, generator=generator).pow(3) * 4).to(device)
    x[2] = 0.0  # a cell without counts
    logits = torch.randn(6, 30, generator=generator).to(device).requires_grad_()
    log_library = torch.full((6, 1), 5.0, device=device)
    log_theta = torch.linspace(-2.0, 20.0, 30, device=device).requires_grad_()
    results = []
    for counts in (x, x.to_sparse_csr()):
        value = negative_binomial_softmax_log_prob(counts, logits, log_library, log_theta)
        results.append((value, *torch.autograd.grad(value.sum(), (logits, log_theta))))
    for dense, sparse in zip(*results, strict=True):
        torch.testing.assert_close(sparse, dense)
    # no count at all
    empty = torch.zeros(6, 30, device=device)
    value = negative_binomial_softmax_log_prob(empty, logits, log_library, log_theta)
    expected = textbook_softmax_log_prob(empty.double(), logits.double(), log_library.double(), log_theta.double())
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("fused_likelihood_path")
@pytest.mark.parametrize(
    "counts",
    [
        pytest.param([1.0, 2.0, 7.0, 15.0, 16.0, 300.0], id="whole counts (tables below 16, series above)"),
        pytest.param([0.5, 2.25, 7.0, 14.9, 15.5, 300.1], id="fractional counts"),
        pytest.param([1.0, 2.0, 70_000.0, 14.0, 15.0, 300.0], id="a count far beyond the tables"),
    ],
)
def test_every_path_for_the_count_terms_agrees_with_the_textbook_formula(counts):
    x = torch.tensor([counts] * 3, dtype=torch.float64)
    log_mu = torch.tensor([[-1.0, 0.5, 2.0, 2.5, 2.7, 5.7]] * 3, dtype=torch.float64) + torch.arange(3.0)[:, None]
    log_theta = torch.tensor([-2.0, 0.0, 1.0, 2.6, 2.8, 12.0], dtype=torch.float64)
    inputs = {"x": x, "log_mu": log_mu, "log_theta": log_theta}
    reference = value_and_gradients(textbook, inputs, ("log_mu", "log_theta"), torch.float64)
    got = value_and_gradients(elementwise, inputs, ("log_mu", "log_theta"), torch.float64)
    for g, r in zip(got, reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)
    softmax_inputs = {"x": x, "logits": log_mu, "log_library": torch.zeros(3, 1, dtype=torch.float64)}
    softmax_inputs["log_theta"] = log_theta
    reference = value_and_gradients(textbook_softmax_log_prob, softmax_inputs, ("logits", "log_theta"), torch.float64)
    got = value_and_gradients(
        negative_binomial_softmax_log_prob, softmax_inputs, ("logits", "log_theta"), torch.float64
    )
    for g, r in zip(got, reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_agrees_with_the_textbook_formula_where_that_was_exact():
    """Small inverse dispersions and counts: the old formula was exact in float32 there, and so is the new one."""
    x, log_mu, log_theta = torch.meshgrid(
        torch.arange(0.0, 101.0, 5.0, dtype=torch.float64),
        torch.linspace(-2.0, 5.0, 15, dtype=torch.float64),
        torch.linspace(-2.0, 2.0, 9, dtype=torch.float64),
        indexing="ij",
    )
    inputs = {"x": x.reshape(-1), "log_mu": log_mu.reshape(-1), "log_theta": log_theta.reshape(-1)}
    wrt = ("log_mu", "log_theta")
    reference = value_and_gradients(textbook, inputs, wrt, torch.float64)
    old = value_and_gradients(textbook, inputs, wrt, torch.float32)
    new = value_and_gradients(elementwise, inputs, wrt, torch.float32)
    for o, n, r in zip(old, new, reference, strict=True):
        assert scaled_error(o, r) < 1e-4  # the old formula was exact here (to float32's rounding)
        assert scaled_error(n, r) < 1e-4
    assert np.isfinite(new[0].numpy()).all()


@pytest.mark.usefixtures("fused_likelihood_path")
def test_a_vanishing_inverse_dispersion_takes_the_elementwise_path_and_stays_finite():
    """mu / theta overflows float32 below theta ~ e^-88 * library; the fused likelihood hands such inputs over."""
    generator = torch.Generator().manual_seed(4)
    x = torch.poisson(torch.rand(5, 8, generator=generator) * 6)
    logits = torch.randn(5, 8, generator=generator)
    log_library = torch.log(x.sum(-1, keepdim=True).clamp(min=1.0))
    log_theta = torch.tensor([-90.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0, 20.0])
    inputs = {"x": x, "logits": logits, "log_library": log_library, "log_theta": log_theta}
    wrt = ("logits", "log_theta")
    reference = value_and_gradients(textbook_softmax_log_prob, inputs, wrt, torch.float64)
    for counts in (x, x.to_sparse_csr()):
        got = value_and_gradients(negative_binomial_softmax_log_prob, {**inputs, "x": counts}, wrt, torch.float32)
        assert all(bool(torch.isfinite(g).all()) for g in got)
        for g, r in zip(got, reference, strict=True):
            assert scaled_error(g, r) < TARGET
