# Two entry points: `make run` (the dashboard) and `make test` (the whole suite).
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdcore-installed
# the lowest torch pyproject.toml allows, for tests/test_lowest_torch.py (the suite itself runs on the highest)
LOWEST := .venv-torch-lowest
LOWEST_STAMP := $(LOWEST)/.kdcore-installed
PORT ?= 8501

.PHONY: run demo worker test browser-deps postgres-deps bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

$(LOWEST_STAMP): pyproject.toml $(STAMP)
	@test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --upgrade pip
	$(LOWEST)/bin/python -m pip install -q -e . $$($(PY) scripts/lowest_torch.py) "pytest>=8.0" "pytest-timeout>=2.3"
	@touch $@

run: $(STAMP)
	$(PY) -m ui.launch --server.port $(PORT)

demo: $(STAMP)
	$(VENV)/bin/kdcore train examples/digits.yaml

worker: $(STAMP)
	$(VENV)/bin/kdcore worker

browser-deps:
	@bash scripts/ensure_debian_package.sh chromium "the browser tests" \
		'command -v chromium || test -x /usr/bin/chromium'

postgres-deps:
	@bash scripts/ensure_debian_package.sh postgresql "the PostgreSQL store tests" \
		'ls /usr/lib/postgresql/*/bin/initdb || command -v initdb'

test: $(STAMP) $(LOWEST_STAMP) browser-deps postgres-deps
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) $(LOWEST) *.egg-info .pytest_cache
