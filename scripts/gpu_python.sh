# Sourced by the GPU scripts (gpu_check.sh, gpu_train_prior.sh, gpu_sweep_toy.sh), after they set REPO and cd
# into it. The lent GPU image has torch but not diffusers, trimesh, ...: those travel as wheels in .whl/
# (`bash scripts/fetch_gpu_wheels.sh` here, then carry [".whl"]).
#
#   pick_python            PY = python3 where it has torch (the GPU image), else this checkout's .venv (here)
#   install_wheels         pip-install .whl/*.whl into /tmp/site (no index, no deps) and put it on PYTHONPATH
#   need_modules MOD...    install_wheels unless PY imports every MOD already; status 1 if that fails

pick_python() {
    PY=python3
    if ! "$PY" -c "import torch" >/dev/null 2>&1 && [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; fi
    export PY
}

install_wheels() {
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || return 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

need_modules() {
    local mods
    mods=$(IFS=,; echo "$*")
    "$PY" -c "import $mods" >/dev/null 2>&1 || install_wheels
}
