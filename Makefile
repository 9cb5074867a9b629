# Quick start:  make run   (the study with the default profile)   |   make test   (the test suite)
PYTHON ?= python3
VENV ?= .venv
PARAMS ?= params/cpu.yaml
ARGS ?=
BIN := $(VENV)/bin
# tcmalloc speeds CPU training and sampling 1.2-1.8x where Debian's libtcmalloc-minimal4 is installed
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4))
RUN_ENV := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC),)

.PHONY: run test lint venv clean-outputs

# (Re)create the virtual environment whenever pyproject.toml changes.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The FID Inception-V3 weights, outside git (lib/emojidiff/inception_weights.py): fetched whenever the file is
# missing, even when pyproject.toml did not change; offline this prints why and the install goes on.
WEIGHTS_DIR := $(or $(EMOJIDIFF_WEIGHTS),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/emojidiff/inception)
INCEPTION := $(WEIGHTS_DIR)/inception-2015-12-05-torch-fidelity.safetensors
.PHONY: inception-weights
$(INCEPTION): | $(BIN)/.installed
	$(BIN)/python -m emojidiff.inception_weights fetch

inception-weights: $(INCEPTION)

venv: $(BIN)/.installed inception-weights

run: venv
	$(RUN_ENV) $(BIN)/emojidiff run --params $(PARAMS) $(ARGS)

test: venv
	$(BIN)/python -m pytest $(ARGS)

lint: venv
	$(BIN)/ruff check .

clean-outputs:
	rm -rf outputs/*/
