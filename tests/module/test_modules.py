import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from scvi import REGISTRY_KEYS

import myvae as mv
from myvae.module import PyroVAEModule, TorchVAEModule
from myvae.module._base import observed_library


@pytest.fixture
def counts(small_adata) -> torch.Tensor:
    return torch.as_tensor(small_adata.X.toarray())


def _twin_modules(n_genes: int, n_batch: int = 1) -> tuple[TorchVAEModule, PyroVAEModule]:
    torch.manual_seed(0)
    torch_module = TorchVAEModule(n_genes, n_latent=10, n_hidden=128, n_batch=n_batch)
    pyro_module = PyroVAEModule(n_genes, n_latent=10, n_hidden=128, n_batch=n_batch)
    pyro_module.networks.load_state_dict(torch_module.networks.state_dict())
    return torch_module, pyro_module


@pytest.mark.parametrize("n_batch", [1, 3])
@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_torch_loss_equals_pyro_mean_field_elbo(counts, kl_weight, n_batch):
    torch_module, pyro_module = _twin_modules(counts.shape[1], n_batch)
    tensors = {REGISTRY_KEYS.X_KEY: counts}
    batch_index = None
    if n_batch > 1:
        batch_index = (torch.arange(len(counts)) % n_batch).unsqueeze(-1)
        tensors[REGISTRY_KEYS.BATCH_KEY] = batch_index

    torch.manual_seed(42)
    _, _, loss_output = torch_module(tensors, loss_kwargs={"kl_weight": kl_weight})
    torch_loss = loss_output.loss
    torch_loss.backward()

    torch.manual_seed(42)
    pyro_loss = TraceMeanField_ELBO().differentiable_loss(
        pyro_module.model, pyro_module.guide, counts, observed_library(counts), batch_index, kl_weight=kl_weight
    )
    pyro_loss.backward()

    assert torch_loss.item() == pytest.approx(pyro_loss.item(), rel=1e-5)
    for (name, torch_param), pyro_param in zip(
        torch_module.networks.named_parameters(), pyro_module.networks.parameters(), strict=True
    ):
        torch.testing.assert_close(torch_param.grad, pyro_param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_loss_is_reconstruction_plus_kl(counts):
    torch_module, _ = _twin_modules(counts.shape[1])
    _, _, loss_output = torch_module({REGISTRY_KEYS.X_KEY: counts})
    per_cell = loss_output.reconstruction_loss["reconstruction_loss"] + loss_output.kl_local["kl_local"]
    assert loss_output.loss.item() == pytest.approx(per_cell.mean().item(), rel=1e-6)
    assert torch.all(loss_output.kl_local["kl_local"] >= 0)


def test_inference_returns_what_scvi_tools_reads(counts):
    torch_module, pyro_module = _twin_modules(counts.shape[1])
    for module in (torch_module, pyro_module):
        outputs = module.inference(**module._get_inference_input({REGISTRY_KEYS.X_KEY: counts}))
        assert outputs["qz"].loc.shape == (counts.shape[0], 10)
        assert outputs["z"].shape == (counts.shape[0], 10)
        torch.testing.assert_close(outputs["library"], counts.sum(1, keepdim=True))


def test_sample_draws_posterior_predictive_counts(counts):
    torch_module, _ = _twin_modules(counts.shape[1])
    torch.manual_seed(0)
    tensors = {REGISTRY_KEYS.X_KEY: counts}
    one = torch_module.sample(tensors)
    several = torch_module.sample(tensors, n_samples=3)
    assert one.shape == counts.shape
    assert several.shape == (*counts.shape, 3)
    for draw in (one, several):
        assert torch.all(draw >= 0) and torch.all(draw == draw.round())
    # the library size is observed, so a draw's totals scatter around each cell's total
    ratio = one.sum(1) / counts.sum(1)
    assert 0.5 < ratio.median().item() < 2.0


def test_the_decoder_reads_the_batch_and_transform_batch_decodes_as_that_batch(counts):
    module = TorchVAEModule(counts.shape[1], n_latent=4, n_hidden=16, n_batch=2)
    assert module.networks.decoder[0].in_features == 4 + 2
    own = (torch.arange(len(counts)) % 2).unsqueeze(-1)
    tensors = {REGISTRY_KEYS.X_KEY: counts, REGISTRY_KEYS.BATCH_KEY: own}
    as_batch_one = {REGISTRY_KEYS.X_KEY: counts, REGISTRY_KEYS.BATCH_KEY: torch.ones_like(own)}
    torch.manual_seed(3)
    transformed = module.normalized_expression(tensors, transform_batch=1)
    torch.manual_seed(3)
    expected = module.normalized_expression(as_batch_one)
    torch.manual_seed(3)
    untransformed = module.normalized_expression(tensors)
    torch.testing.assert_close(transformed, expected)
    assert not torch.allclose(transformed, untransformed)  # cells of batch 0 are decoded differently
    torch.testing.assert_close(transformed[own.ravel() == 1], untransformed[own.ravel() == 1])
    with pytest.raises(ValueError, match="built for 2 batches; pass each cell's batch_index"):
        module.networks.log_rho(torch.zeros(3, 4))


def test_first_layers_hold_contiguous_gene_by_gene_weights_behind_linear_state_dicts(counts):
    torch_module, pyro_module = _twin_modules(counts.shape[1])
    n_genes = counts.shape[1]
    for module in (torch_module, pyro_module):
        for network in (module.networks.z_mean_encoder, module.networks.z_var_encoder):
            layer = network[0]
            # the parameter is genes x hidden and contiguous (no copy in the step), seen as nn.Linear's weight
            assert layer.weight_t.shape == (n_genes, 128) and layer.weight_t.is_contiguous()
            assert layer.weight.shape == (128, n_genes)
    state = torch_module.networks.state_dict()
    assert state["z_mean_encoder.0.weight"].shape == (128, n_genes)
    assert not any(name.endswith("weight_t") for name in state)
    names = list(state)
    assert names.index("z_mean_encoder.0.weight") + 1 == names.index("z_mean_encoder.0.bias")
    # the same initial values as nn.Linear draws for the same seed
    torch.manual_seed(3)
    linear = torch.nn.Linear(n_genes, 128)
    torch.manual_seed(3)
    layer = mv.module.InputLayer(n_genes, 128)
    assert torch.equal(layer.weight, linear.weight) and torch.equal(layer.bias, linear.bias)
    # state dicts (as saved by an earlier version, from nn.Linear) load into the layer, and back out unchanged
    changed = {name: value + 1.0 for name, value in state.items()}
    torch_module.networks.load_state_dict(changed)
    for name, value in torch_module.networks.state_dict().items():
        assert torch.equal(value, changed[name])
    assert torch_module.networks.z_mean_encoder[0].weight_t.is_contiguous()
    with pytest.raises(RuntimeError, match="size mismatch"):
        torch_module.networks.load_state_dict({**changed, "z_mean_encoder.0.weight": torch.zeros(n_genes, 128)})
