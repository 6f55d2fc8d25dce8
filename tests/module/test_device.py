import collections

import pytest
import torch

from myvae.module._device import on_module_device


class _Echo(torch.nn.Module):
    """A module on some device whose method returns what it was given."""

    def __init__(self, device: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2, device=device))

    @on_module_device
    def echo(self, *args, **kwargs):
        return args, kwargs


Pair = collections.namedtuple("Pair", ["first", "second"])


def test_in_evaluation_mode_tensors_anywhere_in_the_arguments_move_to_the_modules_device():
    module = _Echo("meta").eval()
    x = torch.ones(3)
    args, kwargs = module.echo(x, [x, (x, 1)], Pair(x, "a"), n=2, tensors={"X": x, "none": None})
    assert args[0].device.type == "meta"
    assert args[1][0].device.type == "meta" and args[1][1][0].device.type == "meta" and args[1][1][1] == 1
    assert isinstance(args[2], Pair) and args[2].first.device.type == "meta" and args[2].second == "a"
    assert kwargs["n"] == 2 and kwargs["tensors"]["X"].device.type == "meta" and kwargs["tensors"]["none"] is None


def test_in_training_mode_the_arguments_pass_as_they_are():
    module = _Echo("meta").train()
    x = torch.ones(3)
    args, _ = module.echo(x)
    assert args[0] is x


def test_a_module_on_several_devices_is_refused():
    module = _Echo("cpu").eval()
    module.other = torch.nn.Parameter(torch.zeros(1, device="meta"))
    with pytest.raises(RuntimeError, match="several devices"):
        module.echo(torch.ones(1))
