# Two entry points: `make demo` (set up, collect the demo set, run the pipeline)
# and `make test` (set up, run the tests). Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install demo test bench lint format stop clean-artifacts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# dvc plots show/diff with Vega inlined (npm), so the charts render offline
	$(BIN)/visiontune offline-plots || echo "warning: dvc plots will load Vega from its CDN"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/visiontune server start
	$(BIN)/visiontune collect demo
	$(BIN)/visiontune run
	@echo "The Prefect server keeps running for the UI; stop it with: make stop"

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# speed and scale against baselines → benchmarks/results.md (≈6–8 min on 2 CPU cores)
bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

stop:
	-$(BIN)/visiontune server stop

clean-artifacts:
	rm -rf artifacts
