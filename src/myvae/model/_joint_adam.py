"""Pyro's Adam with one torch optimiser for all parameters, stepped once per SVI step."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import pyro
import torch
from pyro.optim import PyroOptim

from ._lr_warmup import check_warmup_steps, warm_up_learning_rate

__all__ = ["JointAdam"]


class JointAdam(PyroOptim):
    """``pyro.optim.Adam`` that steps every parameter with one :class:`torch.optim.Adam`.

    Pyro's optimisers keep one torch optimiser per parameter and step them one after another, so each SVI step pays
    a round of Python and a kernel launch per parameter. Here the parameters SVI hands over join a single torch
    optimiser (as new ones appear) and one call steps them all, with the same update as Pyro's per-parameter Adam.
    After the step their gradients are released, as ``zero_grad(set_to_none=True)`` does: SVI's zeroing that
    follows then has nothing to do, and the next backward pass writes the gradients instead of adding them to zeros.

    A parameter that takes no part in a step is not moved by it. :meth:`get_state` and ``set_state`` use
    Pyro's format (one single-parameter optimiser state per parameter name), so states move between the two.

    Parameters
    ----------
    optim_args
        Arguments of :class:`torch.optim.Adam` (``lr``, ``eps``, ``fused``, ...).
    warmup_steps
        Steps over which the learning rate rises linearly to ``optim_args["lr"]`` (see ``myvae.model._lr_warmup``);
        0, the default, keeps it there from the first step, as Pyro's Adam does.
    """

    def __init__(self, optim_args: dict, warmup_steps: int = 0):
        super().__init__(torch.optim.Adam, optim_args)
        self._optimizer: torch.optim.Adam | None = None
        self._members: set[torch.Tensor] = set()
        check_warmup_steps(warmup_steps)
        self.warmup_steps = warmup_steps
        self._steps = 0

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        """One Adam step of ``params`` (the parameters of the step's trace); their gradients are then released."""
        params = set(params)
        self._join(params - self._members)
        for idle in self._members - params:  # a gradient left from an earlier step must not move it now
            idle.grad = None
        if self._steps < self.warmup_steps:  # every group rises to the one learning rate of optim_args
            groups = self._optimizer.param_groups
            warm_up_learning_rate(groups, [self.pt_optim_args["lr"]] * len(groups), self._steps, self.warmup_steps)
        self._optimizer.step(*args, **kwargs)
        self._steps += 1
        for param in params:
            param.grad = None

    def _join(self, new: set[torch.Tensor]) -> None:
        """Add parameters to the optimiser, in the order of their names, with any state waiting for them."""
        if not new:
            return
        names = {param: pyro.get_param_store().param_name(param) for param in new}
        ordered = sorted(new, key=lambda param: str(names[param]))
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(ordered, **self.pt_optim_args)
        else:
            self._optimizer.add_param_group({"params": ordered})
        self._members.update(ordered)
        for param in ordered:
            waiting = self._state_waiting_to_be_consumed.pop(names[param], None)
            if waiting is not None:
                single = torch.optim.Adam([param], **self.pt_optim_args)
                # a copy: a state taken from a live optimiser would otherwise go on sharing its tensors
                single.load_state_dict(copy.deepcopy(waiting))  # cast to the parameter's dtype and device
                self._optimizer.state[param] = single.state[param]

    def get_state(self) -> dict:
        """The optimiser's state as Pyro saves it: per parameter name, a single-parameter Adam's ``state_dict``."""
        if self._optimizer is None:
            return {}
        states = {}
        for group in self._optimizer.param_groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                state = {0: self._optimizer.state[param]} if param in self._optimizer.state else {}
                name = pyro.get_param_store().param_name(param)
                states[name] = {"state": state, "param_groups": [{**settings, "params": [0]}]}
        return states
