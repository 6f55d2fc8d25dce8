"""What a release ships says what it is: the version on the command line, the recipe's sdist hash and metadata."""

import importlib.util
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from myvae.__main__ import main

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipe" / "recipe.yaml"


def _check_sha():
    spec = importlib.util.spec_from_file_location("check_sha", ROOT / "recipe" / "check_sha.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version_option_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"myvae {version('myvae')}"


def test_recipe_sha_check_fails_on_drift_and_update_fixes_it(tmp_path):
    check_sha = _check_sha()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.read_text())
    recipe_version = yaml.safe_load(RECIPE.read_text())["context"]["version"]
    sdist = tmp_path / f"myvae-{recipe_version}.tar.gz"
    sdist.write_bytes(b"not the released sdist")
    problem = check_sha.check(sdist, recipe)
    assert "make recipe-sha" in problem
    assert check_sha.check(sdist, recipe, update=True) is None
    assert check_sha.check(sdist, recipe) is None
    assert f"sha256: {check_sha.sdist_sha256(sdist)}" in recipe.read_text()
    assert "is not the sdist of version" in check_sha.check(tmp_path / "myvae-9.9.9.tar.gz", recipe)


def test_recipe_builds_the_released_sdist_under_the_package_license():
    recipe = yaml.safe_load(RECIPE.read_text())
    source = recipe["source"]
    assert source["url"].startswith("https://pypi.org/packages/source/")
    assert re.fullmatch(r"[0-9a-f]{64}", str(source["sha256"]))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert recipe["about"]["license"] == project["license"] == "BSD-3-Clause AND CC-BY-4.0 AND MIT"
    assert recipe["about"]["license_file"] == project["license-files"]
    assert all((ROOT / path).is_file() for path in recipe["about"]["license_file"])


def test_recipe_tests_the_lowest_and_newest_python_the_package_declares():
    recipe = yaml.safe_load(RECIPE.read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python_min = recipe["context"]["python_min"]
    assert project["requires-python"] == f">={python_min}"
    declared = sorted(
        (int(minor) for minor in re.findall(r"Python :: 3\.(\d+)$", "\n".join(project["classifiers"]), re.M)),
    )
    assert f"3.{declared[0]}" == python_min
    (imports,) = [test["python"] for test in recipe["tests"] if "python" in test]
    assert imports["python_version"] == ["${{ python_min }}.*", f"3.{declared[-1]}.*"]
