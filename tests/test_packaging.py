"""The conda-forge recipe renders and asks for what pyproject.toml asks for."""

import re
import tomllib
from pathlib import Path

import pytest
import rattler_build as rb
from packaging.requirements import Requirement
from rattler_build.tool_config import PlatformConfig

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipe" / "recipe.yaml"
CONDA_FORGE_NAMES = {"torch": "pytorch", "igraph": "python-igraph", "matplotlib": "matplotlib-base"}


def _render(path: Path):
    recipe = rb.Stage0Recipe.from_file(str(path))
    (variant,) = recipe.render(render_config=rb.RenderConfig(platform=PlatformConfig(target_platform="linux-64")))
    return variant.recipe


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_recipe_renders_as_noarch_python_with_the_package_version():
    recipe = _render(RECIPE)
    project = _pyproject()
    assert recipe.package.name == project["name"]
    assert str(recipe.package.version) == project["version"]
    assert str(recipe.build.noarch).lower().endswith("python")


def test_run_requirements_match_pyproject():
    project = _pyproject()
    expected = {f"python {project['requires-python']}"}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        expected.add(f"{CONDA_FORGE_NAMES.get(requirement.name, requirement.name)} {requirement.specifier}")
    assert set(_render(RECIPE).requirements.run) == expected


def test_recipe_tests_import_and_run_pip_check():
    text = RECIPE.read_text()
    assert re.search(r"imports:\s*\n\s*- myvae\b", text)
    assert "pip_check: true" in text


def test_a_wrong_key_fails_to_render(tmp_path):
    broken = tmp_path / "recipe.yaml"
    broken.write_text(RECIPE.read_text().replace("requirements:\n  host:", "requirement:\n  host:"))
    (tmp_path / "LICENSE").write_text("")
    with pytest.raises(Exception, match=r"(?i)requirement"):
        _render(broken)
