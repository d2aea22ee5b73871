#!/usr/bin/env bash
# Prepare, on a machine with internet, what bench/gpu_check.sh needs on a GPU machine that has
# python3.12 + torch + onnx + pytest but no PyPI and no ONNX Runtime GPU build.
#
# The GPU machine receives at most 64 MiB per call, and onnxruntime-gpu is a 255 MB wheel whose CUDA
# kernels are 284 MB. So this script downloads the wheel (CUDA 13 build, matching the CUDA 13 libraries
# that the GPU image's torch brings), drops what the runtime does not use (TensorRT provider,
# transformers / quantization / tools helpers), packs the rest as xz and splits it into parts of
# 58 MiB:
#
#   .whl/ort-gpu.partNN       the parts (carry one per device call; see bench/gpu_check.sh)
#   .whl/ort-gpu.sha256       checksum of the whole (carry it with the last part)
#
# Usage:  bash bench/gpu_wheels.sh [ORT_VERSION]      (default 1.31.1; about 10 minutes, mostly xz)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-1.31.1}
PART_BYTES=$((58 * 1024 * 1024))
mkdir -p .whl
grep -qx '/.whl/' .gitignore 2>/dev/null || grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work" "onnxruntime-gpu==${VERSION}"
wheel=$(ls "$work"/onnxruntime_gpu-*.whl)
echo "downloaded $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
unzip -q "$wheel" -d "$work/site"
unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' || true
rm -rf "$work/site/onnxruntime/transformers" "$work/site/onnxruntime/quantization" "$work/site/onnxruntime/tools" \
  "$work/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so"

rm -f .whl/ort-gpu.part* .whl/ort-gpu.sha256
tar -C "$work/site" -cf - . | xz -9 -T0 > "$work/ort-gpu.tar.xz"
(cd "$work" && sha256sum ort-gpu.tar.xz | cut -d' ' -f1) > .whl/ort-gpu.sha256
split -b "$PART_BYTES" -d -a 2 "$work/ort-gpu.tar.xz" .whl/ort-gpu.part
ls -la .whl/
echo "carry .whl/ort-gpu.part00 .. one per call with 'bash bench/gpu_check.sh stage', then the last part"
echo "and .whl/ort-gpu.sha256 with 'bash bench/gpu_check.sh run' (see that script's header)."
