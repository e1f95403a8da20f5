# The two commands of the README. Each sets up a local virtual environment (.venv)
# on first use, then runs: `make study` the main job, `make test` the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: study test clean

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

clean:
	rm -rf $(VENV) build *.egg-info
