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
# @google/model-viewer (npm): the 3D view in report.html (dreamfield/export/report.py copies its
# dist/model-viewer-umd.min.js into each run folder; DREAMFIELD_MODEL_VIEWER overrides where it is found)
MODEL_VIEWER := @google/model-viewer@4.4.0
VIEWER_STAMP := .tools/.model-viewer-4.4.0
# Debian's Chromium, which tests/browser.py drives headless through playwright (playwright's own
# browser download is not used); installed with apt-get when missing and make runs as root
CHROMIUM ?= /usr/bin/chromium

.PHONY: venv test demo clean chromium

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

# order-only on the validator: two npm installs into one --prefix must not run side by side (make -j)
$(VIEWER_STAMP): | $(TOOLS_STAMP)
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix .tools --no-audit --no-fund --silent $(MODEL_VIEWER) && touch $@; \
	else echo "warning: npm not found; reports show no 3D viewer and the browser tests skip (and fail when CI is set)" >&2; fi

chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "warning: $(CHROMIUM) not found (install Debian's chromium as root); the browser tests skip (and fail when CI is set)" >&2; fi

test: $(STAMP) $(TOOLS_STAMP) $(VIEWER_STAMP) chromium
	$(BIN)/python -m pytest -q tests

demo: $(STAMP) $(VIEWER_STAMP)
	$(BIN)/dreamfield demo

clean:
	rm -rf $(VENV) outputs .pytest_cache .tools
