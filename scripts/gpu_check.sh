#!/usr/bin/env bash
# The GPU path of dreamfield, checked and measured in ONE call on a lent H100/H200 (no network there).
#
#   bash scripts/gpu_check.sh            # OUT defaults to a fresh temp folder; prints the table last
#
# Steps (each guarded: a failure is reported and the next step runs; each has a time limit, and all
# share one budget, GPU_CHECK_BUDGET seconds, default 540):
#   install   the carried wheels .whl/*.whl -> /tmp/site (only if a dependency is missing), PYTHONPATH
#   info      nvidia-smi, versions, nvcc/ninja/ffmpeg, `import dreamfield` from the working tree
#   build     nerfacc's CUDA extension, JIT-compiled (TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16), timed,
#             plus one packed op checked against its known answer
#   sds       scripts/make_random_sd.py (random-weight SD 2.1-base, made here) + scripts/bench_sds.py
#   render    scripts/bench_render_paths.py: occupancy-grid vs dense rendering at 128^2, 256 samples
#   pytest    the test suite on this machine (GPU tests included), log in $OUT/pytest.log
#   generate  `dreamfield generate "a red cube"` with the embedded toy prior, then a mesh export
#   report    scripts/gpu_report.py: $OUT/gpu_report.md and $OUT/results.json, table printed last
# The device call (after `bash scripts/fetch_gpu_wheels.sh` here): command "bash scripts/gpu_check.sh",
# carry [".whl"], timeout_s 600; files back in $OUT: gpu_check.log, pytest.log, gpu_report.md,
# results.json, sds_profile.txt, red_cube.glb.
# GPU_CHECK_STEPS=build,sds,... runs a subset. Without CUDA (a CPU dry run) every step runs a reduced
# version that checks the code path and no timing is meaningful.
set -u -o pipefail

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-540}
STEPS=${GPU_CHECK_STEPS:-install,info,build,sds,render,pytest,generate}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
echo "gpu_check: repo $REPO, OUT $OUT, work $WORK, budget ${BUDGET}s, steps $STEPS"

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DIFFUSERS_NO_ADVISORY_WARNINGS=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
export WORK OUT REPO

# The interpreter: python3 where it has torch (the GPU image), else this checkout's .venv (a dev machine).
source scripts/gpu_python.sh
pick_python
# nvcc and ninja for the JIT build: the venv's bin (ninja) and CUDA's bin, if not on PATH already
PATH="$(dirname "$(command -v "$PY")"):$PATH"
[ -d /usr/local/cuda/bin ] && PATH="$PATH:/usr/local/cuda/bin"
export PATH
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
export CUDA
[ "$CUDA" = 1 ] || echo "gpu_check: no CUDA device: CPU dry run (reduced steps, timings meaningless)"

elapsed() { echo $(( $(date +%s) - START )); }
want() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_step NAME LIMIT_SECONDS FUNCTION: run a step under its limit and the shared budget, record it.
run_step() {
    local name=$1 cap=$2 fn=$3 left limit t0 rc status
    if ! want "$name"; then return 0; fi
    left=$(( BUDGET - $(elapsed) ))
    if (( left < 15 )); then
        echo "=== [$name] skipped: the ${BUDGET}s budget is spent"
        printf '%s\tskipped: budget spent\t0\n' "$name" >>"$WORK/steps.tsv"
        return 0
    fi
    limit=$(( cap < left ? cap : left ))
    echo
    echo "=== [$name] start at ${SECONDS}s of the run ($(elapsed)s elapsed), limit ${limit}s"
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" bash -c "$fn"
    rc=$?
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMED OUT after ${limit}s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    # a step may leave a note (e.g. "skipped: ...") that replaces a plain "ok"
    if [ "$rc" = 0 ] && [ -s "$WORK/$name.note" ]; then status=$(head -c 300 "$WORK/$name.note"); fi
    printf '%s\t%s\t%s\n' "$name" "$status" "$dt" >>"$WORK/steps.tsv"
    echo "=== [$name] $status in ${dt}s ($(elapsed)s elapsed)"
}

# ------------------------------------------------------------------------------------------- steps
# install runs in this shell: it exports PYTHONPATH for the steps after it.
step_install() {
    if "$PY" -c "import diffusers, nerfacc, trimesh, omegaconf, imageio_ffmpeg, mcubes" >/dev/null 2>&1; then
        echo "all dependencies already importable: nothing to install"
    elif ls .whl/*.whl >/dev/null 2>&1; then
        ls -la .whl
        install_wheels || { echo "wheel install FAILED"; return 1; }
    else
        echo "dependencies missing and no .whl/ carried (run scripts/fetch_gpu_wheels.sh, carry .whl)"
        return 1
    fi
}
if want install; then
    t0=$(date +%s.%N)
    echo "=== [install]"
    if step_install; then st=ok; else st=failed; fi
    printf 'install\t%s\t%s\n' "$st" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" >>"$WORK/steps.tsv"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"
# ffmpeg for the turntable video, if the machine has one (the carried imageio-ffmpeg has no binary)
if command -v ffmpeg >/dev/null 2>&1; then export IMAGEIO_FFMPEG_EXE=${IMAGEIO_FFMPEG_EXE:-$(command -v ffmpeg)}; fi

step_info() {
    nvidia-smi 2>&1 | head -20 || echo "no nvidia-smi"
    echo "python: $PY ($("$PY" --version 2>&1)); nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none);" \
        "ninja: $(ninja --version 2>/dev/null || echo none); ffmpeg: ${IMAGEIO_FFMPEG_EXE:-none}; nproc $(nproc)"
    "$PY" - <<'EOF'
import importlib, json, os, torch
info = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)",
        "torch": torch.__version__, "cuda": torch.version.cuda}
for mod in ("diffusers", "transformers", "huggingface_hub", "safetensors", "nerfacc", "trimesh", "omegaconf",
            "imageio", "imageio_ffmpeg", "mcubes", "skimage", "scipy", "numpy"):
    try:
        m = importlib.import_module(mod)
        info[mod] = getattr(m, "__version__", "?")
    except Exception as exc:
        info[mod] = f"MISSING ({type(exc).__name__}: {exc})"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["gpu_mem_gb"] = round(p.total_memory / 2**30, 1)
    info["sm"] = f"{p.major}.{p.minor}, {p.multi_processor_count} SMs"
import dreamfield, dreamfield.cli, dreamfield.optimize, dreamfield.prior, dreamfield.scene.render, dreamfield.distill
info["dreamfield"] = f"{dreamfield.__version__} from {os.path.dirname(dreamfield.__file__)}"
print(json.dumps(info, indent=1))
open(os.path.join(os.environ["WORK"], "info.json"), "w").write(json.dumps(info))
EOF
}

step_build() {
    if [ "$CUDA" != 1 ]; then echo "skipped: no CUDA (the extension builds on first CUDA use)" >"$WORK/build.note"; return 0; fi
    rm -rf "$TORCH_EXTENSIONS_DIR"
    "$PY" - <<'EOF'
import json, os, time
t0 = time.perf_counter()
from dreamfield.scene.nerfacc_cuda import ensure_nerfacc_cuda  # the patched build, cached (C++20 lerp clash)
ensure_nerfacc_cuda(verbose=True)
from nerfacc.cuda._backend import _C
dt = time.perf_counter() - t0
res = {"seconds": round(dt, 1), "ok": _C is not None}
print(f"nerfacc CUDA extension: {'loaded' if _C is not None else 'NOT AVAILABLE'} after {dt:.1f} s")
if _C is not None:
    import torch, nerfacc
    x = torch.arange(1.0, 10.0, device="cuda")
    info = torch.tensor([[0, 2], [2, 3], [5, 4]], device="cuda")
    got = nerfacc.inclusive_sum(x, packed_info=info).tolist()
    want = [1.0, 3.0, 3.0, 7.0, 12.0, 6.0, 13.0, 21.0, 30.0]
    res["smoke"] = "inclusive_sum ok" if got == want else f"inclusive_sum WRONG {got}"
    print(res["smoke"])
open(os.path.join(os.environ["WORK"], "build.json"), "w").write(json.dumps(res))
raise SystemExit(0 if res["ok"] else 1)
EOF
}

step_sds() {
    local model="$WORK/sd21_random"
    if [ "$CUDA" = 1 ]; then
        "$PY" scripts/make_random_sd.py --out "$model" --text-encoder "${GPU_CHECK_TEXT_ENCODER:-full}" || return 1
        "$PY" scripts/bench_sds.py --model "$model" --json "$WORK/sds.json" --profile "$OUT/sds_profile.txt" \
            --steps "${GPU_CHECK_SDS_STEPS:-30}" --warmup 5 \
            --variants "${GPU_CHECK_SDS_VARIANTS:-base,no_occ,channels_last,cudnn_benchmark}"
    else
        "$PY" scripts/make_random_sd.py --out "$model" --tiny || return 1
        "$PY" scripts/bench_sds.py --model "$model" --json "$WORK/sds.json" --profile "$OUT/sds_profile.txt" \
            --steps 2 --warmup 1 --variants base --phase-steps 1 --profile-steps 1 \
            --set render.resolution=32 --set render.n_samples=16 --set field.hash_levels=4 --set field.hash_log2_table_size=12
    fi
    local rc=$?
    rm -rf "$model"
    return $rc
}

step_render() {
    if [ "$CUDA" = 1 ]; then
        "$PY" scripts/bench_render_paths.py --json "$WORK/render.json"
    else
        "$PY" scripts/bench_render_paths.py --json "$WORK/render.json" --res 32 --samples 64 --views 2 --warmup 1 --reps 2
    fi
}

step_pytest() {
    local args
    if [ "$CUDA" = 1 ]; then
        args=(-q -rfEs -p no:cacheprovider)
        "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && args+=(--timeout "${GPU_CHECK_TEST_TIMEOUT:-180}")
        "$PY" -c "import xdist" >/dev/null 2>&1 && args+=(-n "${GPU_CHECK_PYTEST_WORKERS:-8}")
    else
        # dry run: collect every test file (imports, fixtures' modules) without running the CPU suite
        args=(-q --collect-only -p no:cacheprovider)
    fi
    # xdist workers share the 16 cores: 2 torch threads each keeps the CPU tests from oversubscribing
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 "$PY" -m pytest "${args[@]}" ${GPU_CHECK_PYTEST_ARGS:-} tests 2>&1 | tee "$WORK/pytest.log"
    local rc=${PIPESTATUS[0]}
    cp "$WORK/pytest.log" "$OUT/pytest.log"
    return "$rc"
}

step_generate() {
    local toy=dreamfield/prior/toy_prior run="$WORK/red_cube" extra=() exp_args=()
    if [ ! -f "$toy/model_index.json" ] && [ ! -d "$toy/unet" ]; then
        echo '{"skipped": "the embedded toy prior (dreamfield/prior/toy_prior/) is not in the tree yet"}' >"$WORK/generate.json"
        echo "skipped: no toy prior yet" >"$WORK/generate.note"
        return 0
    fi
    if [ "$CUDA" != 1 ]; then extra=(--steps 3); exp_args=(--resolution 32); fi
    [ -n "${IMAGEIO_FFMPEG_EXE:-}" ] || exp_args+=(--no-video)
    local t0 t1 t2 rc1 rc2
    t0=$(date +%s.%N)
    "$PY" -m dreamfield.cli generate "a red cube" --out "$run" --no-export --quiet "${extra[@]}"
    rc1=$?
    t1=$(date +%s.%N)
    rc2=1
    if [ "$rc1" = 0 ]; then
        "$PY" -m dreamfield.cli export "$run" "${exp_args[@]}"
        rc2=$?
    fi
    t2=$(date +%s.%N)
    RUN="$run" T0=$t0 T1=$t1 T2=$t2 RC1=$rc1 RC2=$rc2 VIDEO=$([ -n "${IMAGEIO_FFMPEG_EXE:-}" ] && echo 1 || echo 0) "$PY" - <<'EOF'
import json, os
from pathlib import Path
run = Path(os.environ["RUN"])
t0, t1, t2 = (float(os.environ[k]) for k in ("T0", "T1", "T2"))
res = {"generate_wall_s": round(t1 - t0, 1), "export_wall_s": round(t2 - t1, 1),
       "export": ("mesh + video" if os.environ["VIDEO"] == "1" else "mesh only (no ffmpeg here)")
       if os.environ["RC2"] == "0" else "FAILED", "generate_rc": int(os.environ["RC1"])}
try:
    timing = json.loads((run / "timing.json").read_text())
    res["optimize_s"] = round(timing["optimize_seconds"], 1)
    import yaml
    res["steps"] = int(yaml.safe_load((run / "config.yaml").read_text())["optim"]["steps"])
    if res["steps"]:
        res["it_s"] = round(res["steps"] / timing["optimize_seconds"], 1)
except Exception as exc:
    res["note"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(res))
open(os.path.join(os.environ["WORK"], "generate.json"), "w").write(json.dumps(res))
EOF
    for f in "$run"/mesh.glb "$run"/*.glb; do [ -f "$f" ] && cp "$f" "$OUT/red_cube.glb" && break; done
    [ "$rc1" = 0 ] && [ "$rc2" = 0 ]
}

export -f step_info step_build step_sds step_render step_pytest step_generate

run_step info 60 step_info
run_step build 300 step_build
run_step sds 200 step_sds
run_step render 90 step_render
run_step pytest 240 step_pytest
run_step generate 150 step_generate

echo
echo "=== report ($(elapsed)s elapsed)"
"$PY" scripts/gpu_report.py "$WORK" "$OUT" >/dev/null || python3 scripts/gpu_report.py "$WORK" "$OUT" >/dev/null
if grep -q MISSED "$OUT/gpu_report.md" 2>/dev/null && [ -s "$OUT/sds_profile.txt" ]; then
    echo "--- a goal was missed: where the time goes (top ops of 3 SDS steps; all of it in sds_profile.txt)"
    head -22 "$OUT/sds_profile.txt" | cut -c1-200
fi
echo "gpu_check: done in $(elapsed)s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
cat "$OUT/gpu_report.md" 2>/dev/null || echo "no report was written"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
