#!/usr/bin/env bash
# Download the wheels that the lent GPU machine lacks into .whl/ (git-ignored), for `carry: [".whl"]`.
#
# That machine (Python 3.12, torch 2.11+cu130, transformers 5.17, huggingface_hub 1.33, no network)
# already has every other dependency of pyproject.toml (see .library/device/KINDS.md's package list):
# numpy, scipy, scikit-image, pillow, imageio, safetensors, tqdm, pyyaml, rich, regex, requests, filelock.
# Missing there, pinned to this project's .venv versions:
#   diffusers 0.42.1   (Requires-Dist: huggingface-hub>=1.32,<3, safetensors>=0.8, importlib_metadata,
#                       filelock, numpy, regex, requests, Pillow: all there; importlib_metadata is only
#                       imported on Python < 3.8)
#   nerfacc 0.5.3      (pure-Python wheel; its CUDA extension is JIT-built there by torch.utils.cpp_extension)
#   trimesh 5.2.0, omegaconf 2.4.0 (needs only PyYAML), PyMCubes 0.1.6 (cp312 manylinux)
#   imageio-ffmpeg 0.8.1 built here from its sdist WITHOUT the bundled ffmpeg binary: the manylinux wheel
#                       is 68 MB (170 MB unpacked), over the 64 MiB the call may carry. Import works; video
#                       export needs a system ffmpeg there (gpu_check.sh sets IMAGEIO_FFMPEG_EXE if one exists).
# Usage: bash scripts/fetch_gpu_wheels.sh     (then: du -sh .whl; the whole carried tree must stay < 64 MiB)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
DEST=.whl
rm -rf "$DEST"
mkdir -p "$DEST"

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for spec in diffusers==0.42.1 nerfacc==0.5.3 trimesh==5.2.0 omegaconf==2.4.0 PyMCubes==0.1.6; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$DEST" "$spec"
done

# imageio-ffmpeg: its pure-Python part only (sdist -> py3-none-any wheel, no binaries/ffmpeg-*)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$TMP" imageio-ffmpeg==0.8.1
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$TMP"/imageio_ffmpeg-0.8.1.tar.gz
if unzip -l "$DEST"/imageio_ffmpeg-0.8.1-py3-none-any.whl | grep -q 'binaries/ffmpeg-'; then
    echo "imageio-ffmpeg wheel unexpectedly holds a binary" >&2
    exit 1
fi

echo "wheels in $DEST:"
ls -l "$DEST" | awk 'NR > 1 { printf "  %8.2f MB  %s\n", $5 / 1e6, $9 }'
du -sh "$DEST"
# Every Requires-Dist without an extra marker, to check against the GPU machine's package list
for w in "$DEST"/*.whl; do
    echo "$(basename "$w"): $(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' |
        sed 's/Requires-Dist: //' | tr '\n' ';')"
done
# What a device call would send: tracked + untracked-not-ignored files, plus the carried .whl
SENT=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
WHL=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "working tree that travels: $(( SENT / 1024 / 1024 )) MiB + .whl $(( WHL / 1024 / 1024 )) MiB (limit 64 MiB)"
