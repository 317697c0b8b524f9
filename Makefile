# Two commands: `make demo` (the main job, on bundled defaults) and `make test` (the suite).
# Both create .venv with pinned versions and install the core and every first-party plugin editable.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard modalities/*/pyproject.toml)
STAMP := $(VENV)/.distill-installed

.PHONY: install demo test test-fast test-long bench-toy clean

$(STAMP): requirements.txt pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e . $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/distill demo

# Two workers (pytest-xdist): the slow end-to-end tests run one CPU thread each.
test: install
	$(BIN)/python -m pytest -q -n 2 -m "not long"

test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not long"

# The runs beyond the suite's 20-minute budget (about 5 minutes).
test-long: install
	$(BIN)/python -m pytest -q -n 2 -m long

bench-toy: install
	$(BIN)/distill bench toy --out docs/benchmarks/toy.json

clean:
	rm -rf $(VENV) runs .pytest_cache
