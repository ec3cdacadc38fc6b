#!/usr/bin/env bash
# Build nerfacc 0.5.3's CUDA extension against PyPI's CUDA torch on a machine with nvcc and no GPU, the
# way dreamfield does at start-up (dreamfield/scene/nerfacc_cuda.py), and show that nerfacc's own JIT
# build fails there without the patch.
#
# Steps, all in a throw-away folder WORK (default /tmp/dreamfield-nerfacc-build, removed at the end
# unless KEEP=1):
#   1. a venv with torch==$TORCH (PyPI's Linux x86_64 wheel is the CUDA 13 build, ~4.7 GB with its
#      nvidia-* wheels), nerfacc==0.5.3, ninja, rich, numpy; this repo on PYTHONPATH. Local pip
#      settings (find-links to a CPU wheel, constraints) are switched off for that install only.
#   2. ensure_nerfacc_cuda() into a fresh cache (WORK/cache): compiles; prints the .so, its size, the time.
#   3. the same call in a new process: a cache hit.
#   4. the patch as a diff (the installed utils_math.cuh against the build copy).
#   5. `import nerfacc.cuda._backend` unpatched (its own JIT build): expected to fail on `lerp`.
#
# Usage: nice bash scripts/build_nerfacc_cuda.sh [WORK] 2>&1 | tee /tmp/build_nerfacc_cuda.log
# Env: CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 2),
#      PYTHON (the base interpreter, default python3), TORCH (default 2.13.0), KEEP=1 keeps WORK,
#      SKIP_UPSTREAM=1 skips step 5 (it compiles most of nerfacc before failing).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-/tmp/dreamfield-nerfacc-build}
VENV=$WORK/venv
PY=$VENV/bin/python
TORCH=${TORCH:-2.13.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export DREAMFIELD_CACHE=$WORK/cache
export PYTHONWARNINGS=ignore
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; echo "removed $WORK"; fi; }
trap cleanup EXIT

echo "== machine: $(uname -m), $(nproc) cores, $("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*'), $(gcc --version | head -1)"
echo "== 1. venv $VENV"
mkdir -p "$WORK"
if ! "$PY" -c "import torch, nerfacc, ninja, rich; assert torch.__version__.startswith('$TORCH+cu')" 2>/dev/null; then
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    start=$(date +%s)
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        "$PY" -m pip install -q --progress-bar off "torch==$TORCH" nerfacc==0.5.3 ninja rich numpy
    echo "installed in $(( $(date +%s) - start )) s: $(du -sh "$VENV" | cut -f1)"
fi
"$PY" -c "import torch, nerfacc; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| nerfacc', nerfacc.__version__)"

ENSURE='
import time
t = time.perf_counter()
from dreamfield.scene.nerfacc_cuda import ensure_nerfacc_cuda
b = ensure_nerfacc_cuda(verbose=False)
import nerfacc.cuda._backend as be
assert be._C is not None and hasattr(be._C, "traverse_grids"), "nerfacc does not see the built module"
print(f"so: {b.path}\nsize: {b.path.stat().st_size / 1e6:.2f} MB\nkey: {b.key}\ncached: {b.cached}")
print(f"compile: {b.seconds:.1f} s, whole call: {time.perf_counter() - t:.1f} s")
'
echo "== 2. first call (compiles; CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, no CPATH)"
"$PY" -c "$ENSURE"
echo "== 3. second call, new process (cache hit)"
"$PY" -c "$ENSURE"

echo "== 4. the patch"
CSRC=$("$PY" -c "from dreamfield.scene.nerfacc_cuda import nerfacc_csrc; print(nerfacc_csrc())")
diff -u "$CSRC/include/utils_math.cuh" "$DREAMFIELD_CACHE"/nerfacc/*/src/include/utils_math.cuh || true

if [ "${SKIP_UPSTREAM:-0}" = 1 ]; then exit 0; fi
echo "== 5. nerfacc's own JIT build, unpatched (CPATH = pip's CUDA headers, which the toolkit lacks)"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
start=$(date +%s)
if CPATH=$SITE/nvidia/cu13/include TORCH_EXTENSIONS_DIR=$WORK/torch_extensions PATH=$VENV/bin:$PATH \
        "$PY" -c "import nerfacc.cuda._backend" >"$WORK/upstream.log" 2>&1; then
    echo "UNEXPECTED: the unpatched build succeeded ($(( $(date +%s) - start )) s)"
    exit 1
fi
echo "failed after $(( $(date +%s) - start )) s, as expected:"
grep -m 3 "error" "$WORK/upstream.log" | cut -c1-300
