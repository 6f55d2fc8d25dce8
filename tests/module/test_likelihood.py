import numpy as np
import pytest
import torch
from scipy import stats

from myvae.module import (
    NegativeBinomialMean,
    NegativeBinomialSoftmax,
    cell_log_likelihood,
    negative_binomial_log_prob,
    negative_binomial_softmax_log_prob,
)


def _softmax_inputs(n_cells: int, n_genes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n_cells, n_genes, dtype=torch.float64, generator=generator).pow(4) * 6)
    x[:, 0] += 1  # no empty cell
    logits = torch.randn(n_cells, n_genes, dtype=torch.float64, generator=generator, requires_grad=True)
    log_theta = torch.randn(n_genes, dtype=torch.float64, generator=generator, requires_grad=True)
    return x, logits, x.sum(-1, keepdim=True).log(), log_theta


def test_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    mu = rng.lognormal(mean=0.0, sigma=2.0, size=2000)
    theta = rng.lognormal(mean=0.0, sigma=1.5, size=2000)
    x = rng.negative_binomial(n=theta, p=theta / (theta + mu)).astype(np.float64)
    x[:50] = 0
    x[50:60] = 1e5
    expected = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    got = negative_binomial_log_prob(
        torch.as_tensor(x), torch.as_tensor(np.log(mu)), torch.as_tensor(np.log(theta))
    ).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_analytic_gradient_matches_finite_differences():
    torch.manual_seed(0)
    x = torch.poisson(torch.rand(7, 5, dtype=torch.float64) * 4)
    log_mu = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    log_theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, t: negative_binomial_log_prob(x, m, t), (log_mu, log_theta))


def test_gradient_matches_autograd_of_the_textbook_formula():
    torch.manual_seed(1)
    x = torch.poisson(torch.rand(50, 40, dtype=torch.float64) * 2)
    log_mu = torch.randn(50, 40, dtype=torch.float64, requires_grad=True)
    log_theta = torch.randn(40, dtype=torch.float64, requires_grad=True)
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)
    textbook = (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * (log_theta - log_theta_mu)
        + x * (log_mu - log_theta_mu)
    )
    expected = torch.autograd.grad(textbook.sum(), (log_mu, log_theta))
    got = torch.autograd.grad(negative_binomial_log_prob(x, log_mu, log_theta).sum(), (log_mu, log_theta))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_distribution_log_prob_broadcasts_per_gene_theta():
    log_mu = torch.randn(4, 3, dtype=torch.float64)
    log_theta = torch.randn(3, dtype=torch.float64)
    x = torch.tensor([[0.0, 1.0, 5.0]] * 4, dtype=torch.float64)
    dist = NegativeBinomialMean(log_mu, log_theta)
    assert dist.batch_shape == (4, 3)
    torch.testing.assert_close(dist.log_prob(x), negative_binomial_log_prob(x, log_mu, log_theta.expand(4, 3)))
    expanded = NegativeBinomialMean(log_mu[:1], log_theta).expand((4, 3))
    assert expanded.batch_shape == (4, 3)


@pytest.mark.parametrize(("mu", "theta"), [(0.5, 0.2), (8.0, 3.0), (200.0, 50.0)])
def test_samples_have_the_nb_mean_and_variance(mu, theta):
    torch.manual_seed(0)
    dist = NegativeBinomialMean(torch.tensor(np.log(mu)), torch.tensor(np.log(theta)))
    draws = dist.sample((200_000,)).double()
    assert torch.all(draws == draws.round()) and torch.all(draws >= 0)
    assert draws.mean().item() == pytest.approx(mu, rel=0.03)
    assert draws.var().item() == pytest.approx(mu + mu**2 / theta, rel=0.06)
    assert dist.mean.item() == pytest.approx(mu, rel=1e-6)
    assert dist.variance.item() == pytest.approx(mu + mu**2 / theta, rel=1e-5)


@pytest.mark.usefixtures("fused_likelihood_path")
def test_per_cell_softmax_log_prob_equals_the_summed_elementwise_one():
    x, logits, log_library, log_theta = _softmax_inputs(30, 25, seed=2)
    elementwise = negative_binomial_log_prob(x, log_library + torch.log_softmax(logits, -1), log_theta).sum(-1)
    weights = torch.linspace(0.5, 2.0, 30, dtype=torch.float64)  # a different upstream gradient per cell
    expected = torch.autograd.grad((elementwise * weights).sum(), (logits, log_theta))
    fused = negative_binomial_softmax_log_prob(x, logits, log_library, log_theta)
    torch.testing.assert_close(fused, elementwise)
    got = torch.autograd.grad((fused * weights).sum(), (logits, log_theta))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.usefixtures("fused_likelihood_path")
def test_per_cell_softmax_log_prob_gradient_matches_finite_differences():
    x, logits, log_library, log_theta = _softmax_inputs(6, 5, seed=3)
    assert torch.autograd.gradcheck(
        lambda f, t: negative_binomial_softmax_log_prob(x, f, log_library, t), (logits, log_theta)
    )


@pytest.mark.usefixtures("fused_likelihood_path")
def test_softmax_distribution_scores_cells_like_the_mean_parametrised_one():
    x, logits, log_library, log_theta = _softmax_inputs(8, 6, seed=4)
    px = NegativeBinomialSoftmax(logits, log_library, log_theta)
    reference = NegativeBinomialMean(log_library + torch.log_softmax(logits, -1), log_theta)
    torch.testing.assert_close(px.log_mu, reference.log_mu)
    torch.testing.assert_close(px.log_prob(x), reference.log_prob(x))
    torch.testing.assert_close(cell_log_likelihood(px, x), reference.log_prob(x).sum(-1))
    torch.testing.assert_close(cell_log_likelihood(reference, x), reference.log_prob(x).sum(-1))
    # with a leading sample dimension the per-cell score falls back to the elementwise sum
    samples = NegativeBinomialSoftmax(logits.expand(3, 8, 6), log_library, log_theta)
    torch.testing.assert_close(samples.to_event(1).log_prob(x), reference.log_prob(x).sum(-1).expand(3, 8))
    assert samples.expand((3, 8, 6)).batch_shape == (3, 8, 6)
    # Pyro's plates expand the distribution to its own batch shape: the per-gene and per-cell parameters keep
    # their shapes so that cells are still scored by the fused likelihood, with the same result
    same = px.expand(px.batch_shape)
    assert same.log_theta.shape == (6,) and same.log_library.shape == (8, 1)
    torch.testing.assert_close(same.to_event(1).log_prob(x), reference.log_prob(x).sum(-1))
    assert px.sample().shape == (8, 6)


def _pbmc_minibatch_inputs(dtype: torch.dtype):
    """512 PBMC 3k cells on their 1,000 most expressed genes, with decoder outputs as spread as a trained model's."""
    import myvae as mv

    counts = mv.datasets.pbmc3k().X
    genes = np.argsort(-np.asarray(counts.sum(axis=0)).ravel())[:1000]
    x = torch.as_tensor(counts[:512][:, genes].toarray(), dtype=dtype).to_sparse_csr()
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(512, 1000, generator=generator) * 2.0).to(dtype).requires_grad_()
    log_theta = (torch.randn(1000, generator=generator) * 1.5 + 1.0).to(dtype).requires_grad_()
    log_library = torch.as_tensor(np.log(counts[:512].sum(axis=1)), dtype=dtype)
    return x, logits, log_library, log_theta


def test_row_loops_and_torch_operations_agree_on_real_counts(monkeypatch):
    """The compiled row loops and the torch operations give the same value and gradients on a real minibatch."""
    from myvae.module import _likelihood

    x, logits, log_library, log_theta = _pbmc_minibatch_inputs(torch.float32)
    assert int((x.values() >= 16).sum()) > 100  # counts beyond the per-gene tables, too
    weights = torch.linspace(-1.0, -0.5, 512)  # a different upstream gradient per cell
    results = {}
    for row_loops in (True, False):
        monkeypatch.setattr(_likelihood, "_ROW_LOOPS", row_loops)
        value = negative_binomial_softmax_log_prob(x, logits, log_library, log_theta)
        function = type(value.grad_fn).__name__
        assert function.startswith("_RowLoops") == row_loops
        results[row_loops] = (value, *torch.autograd.grad((value * weights).sum(), (logits, log_theta)))
    for with_loops, with_torch in zip(results[True], results[False], strict=True):
        scale = with_torch.abs().max()
        # both in single precision: they may differ by a few of its roundings of the largest value
        torch.testing.assert_close(with_loops / scale, with_torch / scale, rtol=0, atol=1e-5)


def test_the_row_loops_own_gamma_terms_agree_with_torchs():
    """The per-gene tables, the digamma function and the terms beyond the tables, against ``_nb_terms`` and torch."""
    from myvae.module import _nb_terms, _row_loops

    theta = torch.logspace(-3.0, 9.0, 49, dtype=torch.float64)  # beyond e^-2 ... e^20 on both sides
    tables = [torch.empty(49, _nb_terms._SMALL_COUNTS, dtype=torch.float64) for _ in range(2)]
    _row_loops.per_gene_tables(theta.numpy(), *(table.numpy() for table in tables))
    for got, expected in zip(tables, _nb_terms._per_gene_tables(theta, True), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-12)

    z = torch.logspace(-3.0, 5.0, 97, dtype=torch.float64)
    digamma = torch.tensor([_row_loops._digamma(float(value)) for value in z], dtype=torch.float64)
    torch.testing.assert_close(digamma, torch.digamma(z), rtol=1e-13, atol=1e-12)

    x, theta = torch.meshgrid(
        torch.tensor([0.5, 2.25, 14.9, 16.0, 300.1, 7e4], dtype=torch.float64), theta, indexing="ij"
    )
    x, theta = x.reshape(-1), theta.reshape(-1)
    terms = [_row_loops._gamma_terms(float(a), float(b), True) for a, b in zip(x, theta, strict=True)]
    got = torch.tensor(terms, dtype=torch.float64)
    expected = torch.stack(_nb_terms._gamma_terms(x, theta, True), dim=-1)
    scale = expected.abs().clamp(min=1.0)  # lgamma(x + theta) - lgamma(x + 1) cancels at x = 7e4, in both
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-10)


def test_row_loops_apply_to_single_precision_on_the_cpu_only():
    from myvae.module import _row_loops

    assert _row_loops.applies_to(torch.zeros(2, 3), torch.zeros(2), torch.zeros(3))
    assert not _row_loops.applies_to(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2), torch.zeros(3))
    assert not _row_loops.applies_to(torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2), torch.zeros(3))
    assert not _row_loops.applies_to(torch.zeros(2, 3, device="meta"), torch.zeros(2), torch.zeros(3))


@pytest.mark.usefixtures("fused_likelihood_path")
def test_the_fused_likelihood_warns_about_nothing():
    """Nothing it does on the way (its overflow guard, dense counts made sparse) reaches the user as a warning."""
    import warnings

    x, logits, log_library, log_theta = _softmax_inputs(5, 4, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        negative_binomial_softmax_log_prob(x, logits, log_library.requires_grad_(), log_theta).sum().backward()
