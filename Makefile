# The two commands of the README. Each sets up a local virtual environment (.venv)
# on first use, then runs: `make study` the main job, `make test` the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: study test docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,gpu]'
	touch $@

# Real CIFAR-10 where these machines keep it; elsewhere ./data, downloaded on first use.
DATA_DIR ?= $(if $(wildcard ../shared/data/cifar10),../shared/data,data)

study: $(VENV)/.installed
	$(BIN)/psum study --data-dir $(DATA_DIR) --download --out study

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The API reference, from the docstrings (their examples run in the test suite).
docs: $(VENV)/.installed
	$(BIN)/pdoc --docformat numpy -o docs/api psum emulator hwgen synth reports
	@echo "wrote docs/api/index.html"

clean:
	rm -rf $(VENV) build *.egg-info
