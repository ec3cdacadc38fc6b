# Two commands do all the set-up: `make demo` and `make test`.
# TORCH_SPEC picks the torch build (default: the CPU build of 2.13.0), e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.dreamfield-installed
# the Khronos glTF validator (npm) that tests/test_export_mesh.py runs on every GLB it writes
GLTF_VALIDATOR := gltf-validator@2.0.0-dev.3.10
TOOLS_STAMP := .tools/.gltf-validator-2.0.0-dev.3.10

.PHONY: venv test demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

$(TOOLS_STAMP):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix .tools --no-audit --no-fund --silent $(GLTF_VALIDATOR) && touch $@; \
	else echo "warning: npm not found; the glTF validator test skips (and fails when CI is set)" >&2; fi

test: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/dreamfield demo

clean:
	rm -rf $(VENV) outputs .pytest_cache .tools
