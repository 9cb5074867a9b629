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

# The FID Inception-V3 weights, outside git (lib/emojidiff/evaluation/inception_weights.py): checked by hash on every call and
# fetched when missing or damaged, even when pyproject.toml did not change; offline this prints why and goes on.
WEIGHTS_DIR := $(or $(EMOJIDIFF_WEIGHTS),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/emojidiff/inception)
INCEPTION := $(WEIGHTS_DIR)/inception-2015-12-05-torch-fidelity.safetensors
.PHONY: inception-weights
inception-weights: | $(BIN)/.installed
	$(BIN)/python -m emojidiff.evaluation.inception_weights fetch

venv: $(BIN)/.installed inception-weights

run: venv
	$(RUN_ENV) $(BIN)/emojidiff run --params $(PARAMS) $(ARGS)

test: venv
	$(BIN)/python -m pytest $(ARGS)

lint: venv
	$(BIN)/ruff check .

clean-outputs:
	rm -rf outputs/*/

# Mutation testing (slow, not in CI): mutmut mutates the MUTATE modules one small change at a time and runs the tests
# that cover each change ([tool.mutmut] in pyproject.toml); a surviving mutant is a change no test noticed.
# It works in a scratch copy laid out as src/emojidiff; `make mutants MUTATE=ema` checks one module.
MUTATE ?= edm sampler ema checkpoint metrics
MUTANTS_DIR ?= $(or $(TMPDIR),/tmp)/emojidiff-mutants
MUTMUT_CHILDREN ?= 2
MUTATE_RE := emojidiff[.]($(subst $(eval) ,|,$(strip $(MUTATE))))[.]
.PHONY: mutants
mutants: venv
	rm -rf $(MUTANTS_DIR) && mkdir -p $(MUTANTS_DIR)/src
	cp -r lib/emojidiff $(MUTANTS_DIR)/src/ && cp -r tests params pyproject.toml $(MUTANTS_DIR)/
	cd $(MUTANTS_DIR) && OMP_NUM_THREADS=1 $(abspath $(BIN))/mutmut run --max-children $(MUTMUT_CHILDREN) \
		$(foreach m,$(MUTATE),'emojidiff.$(m).*') >mutmut.log 2>&1 || { tail -c 3000 mutmut.log; exit 1; }
	cd $(MUTANTS_DIR) && $(abspath $(BIN))/mutmut results --all true | grep -E '$(MUTATE_RE)' >results.txt; \
		grep -v ': killed$$' results.txt; \
		echo "surviving mutants: $$(grep -c ': survived$$' results.txt) of $$(grep -c ': ' results.txt)" \
			"($(MUTATE)); 'mutmut show NAME' in $(MUTANTS_DIR) shows one"
