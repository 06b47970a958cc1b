# Two entry points: `make demo` (set up, collect the demo set, run the pipeline)
# and `make test` (set up with the test extras, run the tests). Everything lives in .venv.
# The demo installs only what the pipeline needs; each extra has its own stamp.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_DEV  := $(VENV)/.installed-dev
STAMP_DOCS := $(VENV)/.installed-docs

export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

export NO_MKDOCS_2_WARNING := 1

.PHONY: install install-dev demo test docs bench lint format stop clean-artifacts

# Installs go through uv when it installs (≈3× faster than pip here), given what pip is
# configured with (constraints, find-links, indexes) and pip's rule of the best version over
# every index, so both pick the same versions; pip itself is the fallback.
PIP_TO_UV = $(BIN)/python -m pip config list 2>/dev/null | sed -nE \
	"s/^[^=]*\.(constraint|find-links|extra-index-url|index-url)='(.*)'$$/\1 \2/p" | \
	while read -r key values; do for v in $$values; do printf -- '--%s %s ' "$$key" "$$v"; done; done
define install
	( $(BIN)/python -m pip install --quiet uv 2>/dev/null && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
	    --index-strategy unsafe-best-match $$($(PIP_TO_UV)) $(1) ) || \
	$(BIN)/python -m pip install --quiet $(1)
endef

# what the demo (and every visiontune command) needs: the package alone
$(STAMP_DEMO): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(call install,-e .)
	# dvc plots show/diff with Vega inlined (npm), so the charts render offline
	$(BIN)/visiontune offline-plots || echo "warning: dvc plots will load Vega from its CDN"
	touch $(STAMP_DEMO)

# the tests, benchmarks and linters: pytest, ruff, the servers the tests start, the docs build
$(STAMP_DEV): $(STAMP_DEMO) pyproject.toml
	$(call install,-e ".[dev]")
	touch $(STAMP_DEV) $(STAMP_DOCS)

$(STAMP_DOCS): $(STAMP_DEMO) pyproject.toml
	$(call install,-e ".[docs]")
	touch $(STAMP_DOCS)

install: $(STAMP_DEMO)

install-dev: $(STAMP_DEV)

demo: install
	$(BIN)/visiontune server start
	$(BIN)/visiontune collect demo
	$(BIN)/visiontune run
	@echo "The Prefect server keeps running for the UI; stop it with: make stop"

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# the manual (mkdocs-material) on http://127.0.0.1:8000, rebuilt on every change
docs: $(STAMP_DOCS)
	$(BIN)/mkdocs serve -a 127.0.0.1:8000

# speed and scale against baselines → benchmarks/results.md (≈29 min on 2 CPU cores)
bench: install-dev
	$(BIN)/python -m benchmarks

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

stop:
	-$(BIN)/visiontune server stop

clean-artifacts:
	rm -rf artifacts
