"""JointAdam: Pyro's Adam stepped as one torch optimiser, with the same updates and Pyro's state format."""

import copy

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from scvi import REGISTRY_KEYS

import myvae as mv
from myvae.model import JointAdam

SETTINGS = {"lr": 0.01, "eps": 0.01, "fused": True}


def _svi_path(counts: torch.Tensor, optim, steps: int = 4) -> tuple[dict[str, torch.Tensor], list[torch.Tensor | None]]:
    """The module's parameters after ``steps`` SVI steps from the same start, and each parameter's gradient after."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    module = mv.module.PyroVAEModule(counts.shape[1], n_latent=4, n_hidden=16)
    svi = SVI(module.model, module.guide, optim, TraceMeanField_ELBO())
    args, kwargs = module._get_fn_args_from_batch({REGISTRY_KEYS.X_KEY: counts})
    for _ in range(steps):
        svi.step(*args, **kwargs)
    return {name: param.detach().clone() for name, param in module.networks.named_parameters()}, [
        param.grad for param in module.networks.parameters()
    ]


@pytest.fixture
def counts(small_adata) -> torch.Tensor:
    return torch.as_tensor(small_adata.X[:32].toarray())


def test_joint_adam_takes_the_steps_of_pyros_adam_and_releases_the_gradients(counts):
    expected, pyro_grads = _svi_path(counts, pyro.optim.Adam(dict(SETTINGS)))
    joint, joint_grads = _svi_path(counts, JointAdam(dict(SETTINGS)))
    assert expected.keys() == joint.keys()
    for name in expected:
        torch.testing.assert_close(joint[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert all(grad is not None for grad in pyro_grads)  # Pyro's Adam leaves zeros behind
    assert all(grad is None for grad in joint_grads)


def _registered(name: str, value: torch.Tensor) -> torch.Tensor:
    pyro.param(name, value)
    return pyro.get_param_store().get_param(name).unconstrained()


def test_a_parameter_joins_when_it_first_appears_and_only_the_steps_parameters_move():
    pyro.clear_param_store()
    first, second = _registered("first", torch.zeros(3)), _registered("second", torch.zeros(2))
    optim = JointAdam({"lr": 0.1})
    first.grad = torch.ones(3)
    optim([first])
    moved = first.detach().clone()
    assert (moved < 0).all() and (second == 0).all()
    assert first.grad is None

    first.grad, second.grad = torch.ones(3), torch.ones(2)  # a stale gradient on a parameter not in this step
    optim([second])
    torch.testing.assert_close(first.detach(), moved)
    assert (second < 0).all()
    assert first.grad is None and second.grad is None


def test_state_moves_between_joint_adam_and_pyros_adam_in_pyros_format():
    pyro.clear_param_store()
    weight, bias = _registered("weight", torch.arange(4.0)), _registered("bias", torch.ones(2))

    def step(optim) -> tuple[torch.Tensor, torch.Tensor]:
        weight.grad, bias.grad = torch.linspace(-1, 1, 4), torch.tensor([0.5, -2.0])
        optim([weight, bias])
        return weight.detach().clone(), bias.detach().clone()

    def place(values: tuple[torch.Tensor, torch.Tensor]) -> None:
        with torch.no_grad():
            weight.copy_(values[0])
            bias.copy_(values[1])

    pyros = pyro.optim.Adam({"lr": 0.1})
    for _ in range(3):
        start = step(pyros)
    saved = copy.deepcopy(pyros.get_state())
    expected = step(pyros)

    place(start)
    joint = JointAdam({"lr": 0.1})
    joint.set_state(saved)
    torch.testing.assert_close(step(joint), expected)
    assert joint.get_state().keys() == saved.keys() == {"weight", "bias"}
    for name, state in joint.get_state().items():
        assert state["state"][0]["step"] == 4
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state["state"][0][key], pyros.get_state()[name]["state"][0][key])

    # and back: Pyro's Adam picks up the joint optimiser's state and takes the same next step as its own
    resumed = pyro.optim.Adam({"lr": 0.1})
    resumed.set_state(copy.deepcopy(joint.get_state()))
    after_resumed = step(resumed)
    place(expected)
    torch.testing.assert_close(step(pyros), after_resumed)


def test_the_pyro_plan_optimises_with_joint_adam_unless_given_an_optimiser(small_adata):
    module = mv.module.PyroVAEModule(small_adata.n_vars)
    plan = mv.model.ValidatedPyroTrainingPlan(module, optim_kwargs={"lr": 0.02, "eps": 0.01, "fused": True})
    assert isinstance(plan.optim, JointAdam) and plan.svi.optim is plan.optim
    assert plan.optim.pt_optim_args == {"lr": 0.02, "eps": 0.01, "fused": True}
    assert mv.model.ValidatedPyroTrainingPlan(module).optim.pt_optim_args == {"lr": 1e-3}  # scvi-tools' default
    own = pyro.optim.ClippedAdam({"lr": 0.01})
    assert mv.model.ValidatedPyroTrainingPlan(module, optim=own).optim is own
