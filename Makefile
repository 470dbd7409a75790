# `make demo` and `make test` work on a fresh clone: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint unit demo bench clean

# editable_mode=compat: the install is a path in a .pth file, which mypy follows (it cannot see an import hook)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy wal

# --durations: each run lists its slowest tests, so the suite's time (kept under 10 min on 2 cores) is watched.
unit: $(STAMP)
	$(PY) -m pytest -q --durations=20

# The whole suite: lint, type check, then every test (slow ones included).
test: lint unit

demo: $(STAMP)
	$(PY) -m wal demo

bench: $(STAMP)
	$(PY) -m pytest benches -q --benchmark-only

clean:
	rm -rf $(VENV) wal-data wal-demo .pytest_cache .mypy_cache .ruff_cache
