"""Tensor arguments moved to a module's device, as scvi-tools' ``auto_move_data`` does, without its type checks.

scvi-tools' decorator walks the arguments of a module call in evaluation mode and asks of each one whether it is a
``Mapping`` or a ``Sequence``. Those are abstract base classes: the first such question about a type after any class
was registered with one of them (importing a library does that) walks the whole tree of their subclasses, about
0.3 s in a scanpy session, and it is asked again in every new process. :func:`on_module_device` moves the same
tensors, found in dicts, lists and tuples by their concrete types, so a first validation or query costs what later
ones do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["on_module_device"]

Method = TypeVar("Method", bound=Callable[..., Any])


def on_module_device(method: Method) -> Method:
    """Decorate a module method so that, in evaluation mode, its tensor arguments move to the module's device.

    In training mode (where Lightning has already moved the minibatch) the arguments pass as they are, as with
    scvi-tools' ``auto_move_data``. Tensors inside dicts, lists and tuples (named tuples too) are moved; other
    objects pass unchanged.
    """

    @functools.wraps(method)
    def on_device(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            return method(self, *args, **kwargs)
        devices = {parameter.device for parameter in self.parameters()}
        if len(devices) > 1:
            raise RuntimeError(
                f"{type(self).__name__}'s parameters are on several devices: {sorted(map(str, devices))}."
            )
        if not devices:
            return method(self, *args, **kwargs)
        (device,) = devices
        return method(self, *_moved(args, device), **_moved(kwargs, device))

    return on_device


def _moved(data: Any, device: torch.device) -> Any:
    """``data`` with every tensor in it (through dicts, lists and tuples) on ``device``."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, dict):
        return type(data)({key: _moved(value, device) for key, value in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a named tuple
        return type(data)(*(_moved(value, device) for value in data))
    if isinstance(data, list | tuple):
        return type(data)(_moved(value, device) for value in data)
    return data
