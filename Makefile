# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch must be the CPU build: a bare `torch` requirement pulls a multi-GB CUDA build. Where the
# CPU wheel is not on local disk, point pip at the PyTorch CPU wheel index:
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu torch==2.13.0"
TORCH_PIP_ARGS ?= torch==2.13.0

.PHONY: install demo serve test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/python examples/demo.py

serve: install
	$(BIN)/semcache serve --config config.example.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The store tests start their own redis-server (a free loopback port, no persistence).
test: lint
	command -v redis-server || (apt-get update && apt-get install -y redis-server)
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) .semcache .pytest_cache .mypy_cache .ruff_cache
