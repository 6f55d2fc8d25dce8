# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
# Another torch build: `make TORCH_SPEC="torch==2.5.1" test` (installed before the package).
# Developer tools are PEP 735 dependency groups (dev, test, doc): `pip install --group` needs pip >= 25.1.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?= -n 2
# The newest releases on Python 3.12 (`make test-latest`). The registry's torch for 3.12 is a large CUDA build, so
# this venv lives outside the clone and is kept between runs; each run only upgrades what has a newer release.
LATEST_PYTHON ?= env PYENV_VERSION=3.12.1 python3.12
LATEST_VENV ?= $(HOME)/.cache/myvae/venv-py312
LATEST_PACKAGES ?= torch scanpy anndata scvi-tools mudata muon pandas
# The lowest declared versions (`make test-min`): every dependency pinned to its floor in pyproject.toml.
MIN_PYTHON ?= $(PYTHON)
MIN_VENV ?= $(HOME)/.cache/myvae/venv-min

.PHONY: demo test test-latest test-min lint docs tutorials package recipe-sha bench bench-quality napari-screenshot clean

$(BIN)/.myvae-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[napari]" --group dev --group doc
	touch $@

demo: $(BIN)/.myvae-installed
	$(BIN)/python -m myvae demo $(DEMO_ARGS)

test: $(BIN)/.myvae-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-latest:
	test -x $(LATEST_VENV)/bin/python || $(LATEST_PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade $(LATEST_PACKAGES) -e ".[napari]" --group test
	$(LATEST_VENV)/bin/python -m pip freeze | grep -iE "^(torch|scanpy|anndata|scvi-tools|mudata|muon|pandas|lightning|numpy)=="
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-min:
	test -x $(MIN_VENV)/bin/python || $(MIN_PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip packaging
	$(MIN_VENV)/bin/python .ci/min_constraints.py > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install --quiet -c $(MIN_VENV)/constraints.txt -e ".[napari]" --group test
	$(MIN_VENV)/bin/python -m pip freeze | grep -iE "^(torch|scanpy|anndata|scvi-tools|mudata|muon|pandas|lightning|numpy)=="
	$(MIN_VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.myvae-installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pre-commit run --all-files --show-diff-on-failure

docs: $(BIN)/.myvae-installed
	rm -rf docs/_build docs/generated
	$(BIN)/python -m sphinx -W --keep-going -n -b html docs docs/_build/html

# Execute every tutorial with a few epochs (into a scratch folder: the committed outputs stay as they are).
tutorials: $(BIN)/.myvae-installed
	rm -rf .tutorials-run && mkdir -p .tutorials-run
	MYVAE_TUTORIAL_MAX_EPOCHS=3 $(BIN)/jupyter nbconvert --to notebook --execute --output-dir .tutorials-run \
		--ExecutePreprocessor.timeout=600 --ExecutePreprocessor.kernel_name=python3 tutorials/*.ipynb

# Build the sdist and wheel, check them, and install the wheel into a clean venv (torch pinned first).
package: $(BIN)/.myvae-installed
	rm -rf dist .package-venv
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python recipe/check_sha.py dist/*.tar.gz
	$(PYTHON) -m venv .package-venv
	.package-venv/bin/python -m pip install --quiet --upgrade pip
	.package-venv/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	.package-venv/bin/python -m pip install --quiet dist/*.whl
	.package-venv/bin/python -m pip check
	cd /tmp && $(CURDIR)/.package-venv/bin/python -c "import myvae as mv; assert mv.datasets.pbmc3k().n_obs == 2700; assert mv.datasets.pbmc_cite().n_obs == 400; print('wheel OK:', mv.__version__)"
	.package-venv/bin/myvae --help > /dev/null
	.package-venv/bin/python -c "from importlib.metadata import entry_points; from importlib.resources import files; \
		(ep,) = entry_points(group='napari.manifest', name='myvae'); assert files('myvae._napari').joinpath('napari.yaml').is_file(); print('napari manifest:', ep.value)"

# Write the sha256 of the sdist built from this checkout into the conda-forge recipe (see recipe/recipe.yaml).
recipe-sha: $(BIN)/.myvae-installed
	rm -rf dist
	$(BIN)/python -m build --sdist --outdir dist .
	$(BIN)/python recipe/check_sha.py --update dist/*.tar.gz

# Training throughput against scvi-tools (20-35 minutes; BENCH_ARGS=--quick for under two).
bench: $(BIN)/.myvae-installed
	$(BIN)/python benchmarks/train_throughput.py $(BENCH_ARGS)

# Embedding quality and batch correction against scvi-tools, scored by scib-metrics (installs the bench extra).
bench-quality: $(BIN)/.myvae-installed
	$(BIN)/python -m pip install --quiet -e ".[napari,bench]"
	$(BIN)/python benchmarks/quality.py $(BENCH_ARGS)

# The napari widget's screenshot in the docs (needs Xvfb, Mesa and Qt's X11 libraries; see docs/napari.md).
napari-screenshot: $(BIN)/.myvae-installed
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/_scripts/napari_screenshot.py

clean:
	rm -rf $(VENV) myvae-demo .pytest_cache build dist docs/_build docs/generated .tutorials-run .package-venv
