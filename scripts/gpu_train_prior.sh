#!/usr/bin/env bash
# Train the embedded toy prior on a lent GPU in ONE device call, then score it in 2D beside the shipped one.
#
#   device run: command "bash scripts/gpu_train_prior.sh", carry [".whl"], timeout_s 600
#   (run `bash scripts/fetch_gpu_wheels.sh` here first; the machine lacks diffusers and omegaconf)
#
# Writes under $OUT (default: a fresh temp folder); the device returns at most 8 files, so the folder
# travels packed:
#   toy_prior.tgz.part* the new diffusers folder, tar.gz split in 8 MiB parts; unpack here with
#                       `cat toy_prior.tgz.part* | tar -xzf - -C dreamfield/prior` (replaces toy_prior/)
#   eval2d_new/, eval2d_old/   scripts/eval_toy.py 2d results (json + sample grid) of the new and the shipped prior,
#                       same seed, same sampler, same machine
#   train.log           the whole log
# TRAIN_BUDGET (seconds of training, default 400) and VAE_SHARE (default 0.3) tune the split.
# Without CUDA it runs the --smoke training and a tiny 2D eval on the CPU (a dry run of the code path).
set -u -o pipefail
rm -rf /tmp/prior_pack
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$(mktemp -d /tmp/gpu_train_out.XXXXXX)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/train.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
START=$(date +%s)

source scripts/gpu_python.sh
pick_python
need_modules diffusers omegaconf || exit 1
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
[ "$CUDA" = 1 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "setup: $(( $(date +%s) - START )) s; torch $("$PY" -c 'import torch; print(torch.__version__)'); cuda $CUDA"

if [ "$CUDA" = 1 ]; then
    "$PY" scripts/train_toy_prior.py --device cuda --time-budget "${TRAIN_BUDGET:-400}" --vae-share "${VAE_SHARE:-0.3}" \
        --stages vae,unet --out /tmp/prior_pack/toy_prior --work /tmp/toy_work
    N=4
else
    "$PY" scripts/train_toy_prior.py --smoke --stages vae,unet --out /tmp/prior_pack/toy_prior --work /tmp/toy_work_smoke
    N=1
fi
rc=$?
echo "train: rc $rc at $(( $(date +%s) - START )) s"
DEV=$([ "$CUDA" = 1 ] && echo cuda || echo cpu)
if [ $rc = 0 ]; then
    tar -C /tmp/prior_pack -czf - toy_prior | split -b 8M - "$OUT/toy_prior.tgz.part"
    "$PY" scripts/eval_toy.py 2d --model /tmp/prior_pack/toy_prior --device "$DEV" --n $N --out "$OUT/eval2d_new" | tail -n 12
fi
"$PY" scripts/eval_toy.py 2d --device "$DEV" --n $N --out "$OUT/eval2d_old" | tail -n 12
echo "done: $(( $(date +%s) - START )) s"
exit $rc
