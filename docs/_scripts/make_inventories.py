"""Write the intersphinx inventories in docs/_inventories/ from the installed packages.

The documentation builds offline (no inventory can be fetched at build time), so the inventories of the projects it
links to are committed. Where this was written there was no network either, and no copy of the projects' own
``objects.inv`` on disk, so each inventory is made here: the public API of the installed package (its ``__all__``,
the public members of its classes), each object's URL following that project's documented page scheme (e.g.
``generated/anndata.AnnData.html#anndata.AnnData``). A link therefore points where the project's own inventory
would point. Rerun after upgrading a package (``python docs/_scripts/make_inventories.py``), or replace a file
with the project's real ``objects.inv`` where one can be downloaded: ``docs/conf.py`` reads either.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from pathlib import Path

from sphinx.util.inventory import InventoryFile

OUT = Path(__file__).parents[1] / "_inventories"

Entry = tuple[str, str, str]  # name, role (py:class, py:function, …), URI relative to the project's docs


def _public(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith("_"))


def _exported(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or []
    if not names or module_name == "os":  # os.__all__ leaves out classes such as os.PathLike
        names = [*names, *(name for name in dir(module) if not name.startswith("_"))]
    return [(name, getattr(module, name)) for name in _public(set(names)) if hasattr(module, name)]


def _role(obj: object) -> str:
    if inspect.isclass(obj):
        return "py:exception" if issubclass(obj, BaseException) else "py:class"
    if inspect.ismodule(obj):
        return "py:module"
    if callable(obj):
        return "py:function"
    return "py:data"


def _members(cls: type) -> Iterator[tuple[str, str]]:
    """Public methods, properties and attributes a class defines or inherits from its own package."""
    package = cls.__module__.split(".")[0]
    for name in _public(dir(cls)):
        owner = next((base for base in cls.__mro__ if name in vars(base)), None)
        if owner is None or owner.__module__.split(".")[0] != package:
            continue
        value = vars(owner)[name]
        if isinstance(value, property):
            yield name, "py:property"
        elif isinstance(value, staticmethod | classmethod) or inspect.isfunction(value):
            yield name, "py:method"
        else:
            yield name, "py:attribute"


def _api(
    modules: Iterable[str], page: Callable[[str, object], str], *, members: Callable[[str, str], str] | None = None
) -> list[Entry]:
    """Every public object of ``modules`` (and, for classes, their members) with its page from ``page``."""
    entries: list[Entry] = []
    for module_name in modules:
        for name, obj in _exported(module_name):
            if inspect.ismodule(obj):
                continue
            full = f"{module_name}.{name}"
            uri = page(full, obj)
            entries.append((full, _role(obj), uri))
            if inspect.isclass(obj):
                for member, role in _members(obj):
                    member_uri = members(full, member) if members else f"{uri.split('#')[0]}#{full}.{member}"
                    entries.append((f"{full}.{member}", role, member_uri))
    return entries


def _generated(prefix: str) -> Callable[[str, object], str]:
    """The autosummary scheme: one page per object, ``<prefix><name>.html#<name>``."""
    return lambda full, obj: f"{prefix}{full}.html#{full}"


def python() -> tuple[str, list[Entry]]:
    stdtypes = {"str", "dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "range", "memoryview"}
    entries: list[Entry] = [(name, "py:data", f"library/constants.html#{name}") for name in ("None", "True", "False")]
    entries.append(("Ellipsis", "py:data", "library/constants.html#Ellipsis"))
    for name in _public(dir(builtins)):
        obj = getattr(builtins, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            entries.append((name, "py:exception", f"library/exceptions.html#{name}"))
        elif name in stdtypes:
            entries.append((name, "py:class", f"library/stdtypes.html#{name}"))
        elif inspect.isclass(obj):
            entries.append((name, "py:class", f"library/functions.html#{name}"))
        elif callable(obj):
            entries.append((name, "py:function", f"library/functions.html#{name}"))
    modules = ("typing", "collections.abc", "os", "pathlib", "contextlib", "functools", "logging", "warnings", "enum")
    for module_name in modules:
        entries.append((module_name, "py:module", f"library/{module_name}.html#module-{module_name}"))
        for name, obj in _exported(module_name):
            if not inspect.ismodule(obj):
                # typing's special forms (Any included, a class since 3.11) are data in Python's own inventory
                special_form = module_name == "typing" and (not inspect.isclass(obj) or name == "Any")
                role = "py:data" if special_form else _role(obj)
                entries.append((f"{module_name}.{name}", role, f"library/{module_name}.html#{module_name}.{name}"))
    return "3", entries


def numpy() -> tuple[str, list[Entry]]:
    page = _generated("reference/generated/")
    entries = _api(["numpy"], page, members=lambda full, member: page(f"{full}.{member}", None))
    entries.append(("numpy.random.Generator", "py:class", "reference/random/generator.html#numpy.random.Generator"))
    entries.append(("numpy.random.RandomState", "py:class", "reference/random/legacy.html#numpy.random.RandomState"))
    return version("numpy"), entries


def pandas() -> tuple[str, list[Entry]]:
    page = _generated("reference/api/")
    return version("pandas"), _api(["pandas"], page, members=lambda full, member: page(f"{full}.{member}", None))


def matplotlib() -> tuple[str, list[Entry]]:
    entries = _api(["matplotlib.axes", "matplotlib.figure"], _generated("api/_as_gen/"))
    return version("matplotlib"), entries


def anndata() -> tuple[str, list[Entry]]:
    page = _generated("generated/")
    modules = ["anndata", "anndata.abc"] + (["anndata.io"] if importlib.util.find_spec("anndata.io") else [])
    return version("anndata"), _api(modules, page, members=lambda full, member: page(f"{full}.{member}", None))


def mudata() -> tuple[str, list[Entry]]:
    return version("mudata"), _api(["mudata"], _generated("api/generated/"))


def scanpy() -> tuple[str, list[Entry]]:
    entries = _api(["scanpy.pp", "scanpy.tl", "scanpy.pl", "scanpy.get"], _generated("generated/"))
    entries.append(("scanpy.settings", "py:data", "generated/scanpy.settings.html#scanpy.settings"))
    settings = type(importlib.import_module("scanpy").settings)
    for member, role in _members(settings):
        entries.append((f"scanpy.settings.{member}", role, f"generated/scanpy.settings.html#scanpy.settings.{member}"))
    return version("scanpy"), entries


def scvi_tools() -> tuple[str, list[Entry]]:
    modules = ["scvi.data", "scvi.data.fields", "scvi.model", "scvi.model.base", "scvi.module", "scvi.module.base"]
    modules += ["scvi.nn", "scvi.train"]
    return version("scvi-tools"), _api(modules, _generated("api/reference/"))


def torch() -> tuple[str, list[Entry]]:
    special = {
        "torch.Tensor": "tensors.html#torch.Tensor",
        "torch.Size": "size.html#torch.Size",
        "torch.device": "tensor_attributes.html#torch.device",
        "torch.dtype": "tensor_attributes.html#torch.dtype",
    }

    def page(full: str, obj: object) -> str:
        if full in special:
            return special[full]
        if full.startswith("torch.distributions."):
            # one page for the package, each class anchored under the module that defines it
            return f"distributions.html#{obj.__module__}.{obj.__qualname__}" if inspect.isclass(obj) else ""
        return f"generated/{full}.html#{full}"

    entries = [entry for entry in _api(["torch", "torch.nn", "torch.optim", "torch.distributions"], page) if entry[2]]
    # the distributions are also known by their defining module's name, which is what their page shows
    for name, obj in _exported("torch.distributions"):
        if inspect.isclass(obj) and obj.__module__ != "torch.distributions":
            defined = f"{obj.__module__}.{obj.__qualname__}"
            entries.append((defined, "py:class", page(f"torch.distributions.{name}", obj)))
    return version("torch"), entries


def pyro() -> tuple[str, list[Entry]]:
    pages = {"pyro.infer": "inference_algos.html", "pyro.optim": "optimization.html", "pyro.nn": "nn.html"}
    pages["pyro.distributions"] = "distributions.html"

    def page(full: str, obj: object) -> str:
        module_name = full.rsplit(".", 1)[0]
        anchor = full
        if module_name != "pyro.distributions" and hasattr(obj, "__module__") and inspect.isclass(obj):
            anchor = f"{obj.__module__}.{obj.__qualname__}"  # automodule pages anchor the defining module
        return f"{pages[module_name]}#{anchor}"

    entries = _api(list(pages), page)
    for module_name in ("pyro.infer", "pyro.optim", "pyro.nn"):
        for _, obj in _exported(module_name):
            if inspect.isclass(obj) and obj.__module__.startswith(module_name + "."):
                full = f"{obj.__module__}.{obj.__qualname__}"
                entries.append((full, "py:class", f"{pages[module_name]}#{full}"))
    entries.append(
        (
            "pyro.distributions.torch_distribution.TorchDistribution",
            "py:class",
            "distributions.html#pyro.distributions.torch_distribution.TorchDistribution",
        )
    )
    return version("pyro-ppl"), entries


def lightning() -> tuple[str, list[Entry]]:
    # only what myvae's signatures name; the API pages are api/<full name>.html
    names = [
        "lightning.pytorch.callbacks.Callback",
        "lightning.pytorch.Trainer",
        "lightning.pytorch.LightningDataModule",
    ]
    return version("lightning"), [(name, "py:class", f"api/{name}.html#{name}") for name in names]


PROJECTS: dict[str, tuple[str, Callable[[], tuple[str, list[Entry]]]]] = {
    "python": ("Python", python),
    "numpy": ("NumPy", numpy),
    "pandas": ("pandas", pandas),
    "matplotlib": ("Matplotlib", matplotlib),
    "anndata": ("anndata", anndata),
    "mudata": ("mudata", mudata),
    "scanpy": ("Scanpy", scanpy),
    "scvi-tools": ("scvi-tools", scvi_tools),
    "torch": ("PyTorch", torch),
    "pyro": ("Pyro", pyro),
    "lightning": ("PyTorch Lightning", lightning),
}


def write(path: Path, project: str, project_version: str, entries: list[Entry]) -> int:
    """An inventory in Sphinx's version 2 format; returns the number of objects."""
    unique = {(name, role): uri for name, role, uri in entries if re.fullmatch(r"[\w.]+", name)}
    lines = [f"{name} {role} 1 {uri} -" for (name, role), uri in sorted(unique.items())]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {project_version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress(("\n".join(lines) + "\n").encode()))
    with path.open("rb") as stream:  # what Sphinx will read
        InventoryFile.load(stream, "", lambda base, uri: uri)
    return len(lines)


def main() -> None:
    """Write one inventory per project."""
    OUT.mkdir(exist_ok=True)
    for key, (project, build) in PROJECTS.items():
        project_version, entries = build()
        count = write(OUT / f"{key}.inv", project, project_version, entries)
        print(f"{key}: {count} objects ({project} {project_version})")


if __name__ == "__main__":
    main()
