# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine (no venv needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# FiftyOne: local MongoDB data under the project, no telemetry, no version nag.
export FIFTYONE_DATABASE_DIR ?= $(CURDIR)/.fiftyone/db
export FIFTYONE_DO_NOT_TRACK := true
export FIFTYONE_DATABASE_VALIDATION := false

.PHONY: install demo test lint browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the browser tests (Debian package). Without root or apt, those tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will skip"; \
	  else echo "warning: chromium not found and not root; browser tests will skip"; fi; }

demo: $(STAMP)
	$(BIN)/auditor demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy auditor

clean:
	rm -rf $(VENV) .fiftyone .pytest_cache .mypy_cache .ruff_cache
