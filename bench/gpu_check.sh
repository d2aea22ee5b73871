#!/usr/bin/env bash
# GPU check of vsml-export + vsml_runtime + meta-training, prepared to run on a bare NVIDIA machine (python3
# with torch, onnx, onnxscript, click, numpy and pytest installed, no PyPI). What it covers:
#   * ONNX Runtime CUDA with device-resident state: tests/test_runtime_gpu.py (state stays on the device,
#     CUDA vs CPU parity, CUDA graphs vs plain CUDA, pools) and the parity tests of the export;
#   * the runtime timed on CUDA, plain and with CUDA graphs (bench/runtime.py --cuda-graph), including a
#     pool of 1,024 learners in one call (cases 784-10-n16-pool1024, 64-10-n16-pool1024);
#   * ES with a population of 1,024 on the device and BPTT value+grad on the device, timed, each checked
#     against the CPU (bench/gpu_es.py; exit 1 on a parity failure);
#   * the CPU rows of the same host for reference.
# Results: $OUT when set (the device machine's out folder), else bench/results/gpu-DATE/ in this checkout;
# copy a device run's files to bench/results/gpu-DATE/ and add a note (command, date, machine).
#
# ONNX Runtime GPU travels in parts made by bench/gpu_wheels.sh (at most 64 MiB reach the machine per
# call), staged on the machine while it stays warm:
#
#   call 1..K-1:  carry [".whl/ort-gpu.partNN"]                      bash bench/gpu_check.sh stage
#   call K:       carry [".whl/ort-gpu.partLAST", ".whl/ort-gpu.sha256"]   bash bench/gpu_check.sh run
#
# (If onnxruntime-gpu can be installed some other way, `bash bench/gpu_check.sh run` works without parts.)
# Each part below has its own time limit (730 s in all; a device command may run 600 s, so on a 15-minute
# device budget run it as two calls: `bash bench/gpu_check.sh run` with PARTS=tests,runtime then
# PARTS=meta,pool,cpu -- every part is skipped unless named in PARTS, default all).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
STAGE=/tmp/vsml_gpu
OUT=${OUT:-bench/results/gpu-$(date +%F)}
mkdir -p "$STAGE/parts" "$OUT"

stage_parts() {
  shopt -s nullglob
  for p in .whl/ort-gpu.part*; do cp -f "$p" "$STAGE/parts/"; done
  [ -f .whl/ort-gpu.sha256 ] && cp -f .whl/ort-gpu.sha256 "$STAGE/"
  echo "staged: $(ls "$STAGE/parts" | tr '\n' ' ')"
}

if [ "$MODE" = "stage" ]; then
  stage_parts
  exit 0
fi

start=$(date +%s)
stage_parts
{
  echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  nproc; python3 --version
} 2>&1 | tee "$OUT/env.txt"

# ONNX Runtime GPU: from the staged parts when present, else whatever is installed
if ls "$STAGE"/parts/ort-gpu.part* >/dev/null 2>&1; then
  if [ ! -f "$STAGE/site/onnxruntime/__init__.py" ]; then
    cat "$STAGE"/parts/ort-gpu.part* > "$STAGE/ort-gpu.tar.xz"
    if [ -f "$STAGE/ort-gpu.sha256" ]; then
      echo "$(cat "$STAGE/ort-gpu.sha256")  $STAGE/ort-gpu.tar.xz" | sha256sum -c - || { echo "parts incomplete"; exit 3; }
    fi
    mkdir -p "$STAGE/site" && xz -dc "$STAGE/ort-gpu.tar.xz" | tar -xi -C "$STAGE/site" && rm -f "$STAGE/ort-gpu.tar.xz"
  fi
  export PYTHONPATH="$STAGE/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the project's packages under their import names (the repo maps train/ -> vsml_train, export/ -> vsml_export)
mkdir -p "$STAGE/pkgs"
ln -sfn "$PWD/train" "$STAGE/pkgs/vsml_train"
ln -sfn "$PWD/export" "$STAGE/pkgs/vsml_export"
ln -sfn "$PWD/vsml_runtime" "$STAGE/pkgs/vsml_runtime"
export PYTHONPATH="$STAGE/pkgs:$PYTHONPATH"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

python3 - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import onnxruntime as ort, numpy, torch
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("numpy", numpy.__version__)
EOF

rc=0
PARTS=${PARTS:-all}
want() { [ "$PARTS" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }
if want tests; then
  echo "== tests (CUDA provider: the Learner's device='auto' picks it)" | tee "$OUT/tests.log"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -s tests/test_runtime_gpu.py tests/test_runtime_stream.py \
    tests/test_runtime_learner.py tests/test_export_parity.py tests/test_fused.py 2>&1 | tail -n 60 | tee -a "$OUT/tests.log"
  rc=$((rc | ${PIPESTATUS[0]}))
fi
if want runtime; then
  echo "== benchmark, CUDA (no torch.compile), plain and with CUDA graphs" | tee "$OUT/bench_cuda.log"
  timeout 100 python3 bench/runtime.py --device cuda --no-compile --cuda-graph --budget 0.5 --json "$OUT/bench_cuda.json" 2>&1 \
    | tee -a "$OUT/bench_cuda.log"
  echo "== benchmark, CUDA with torch.compile, one example per step" | tee -a "$OUT/bench_cuda.log"
  timeout 90 python3 bench/runtime.py --device cuda --budget 0.5 --cases 784-10-n16-e1,784-10-n32-e1,64-10-n16-e1 \
    --json "$OUT/bench_cuda_compile.json" 2>&1 | tee -a "$OUT/bench_cuda.log"
fi
if want pool; then
  echo "== runtime, pools of 1,024 learners on CUDA (plain and CUDA graphs)" | tee "$OUT/bench_cuda_pool.log"
  timeout 120 python3 bench/runtime.py --device cuda --no-compile --cuda-graph --budget 0.5 \
    --cases 784-10-n16-pool1024,64-10-n16-pool1024 --json "$OUT/bench_cuda_pool1024.json" 2>&1 \
    | tee -a "$OUT/bench_cuda_pool.log"
  rc=$((rc | ${PIPESTATUS[0]}))
fi
if want meta; then
  echo "== meta-training on the device: ES population 1,024, BPTT value+grad, parity with the CPU" | tee "$OUT/meta.log"
  timeout 150 python3 bench/gpu_es.py --device cuda --pop 1024 --steps 100 --json "$OUT/meta_cuda.json" 2>&1 \
    | tee -a "$OUT/meta.log"
  rc=$((rc | ${PIPESTATUS[0]}))
fi
if want cpu; then
  echo "== benchmark, CPU of this host (1 thread), one example per step, with torch.compile" | tee "$OUT/bench_cpu.log"
  timeout 150 python3 bench/runtime.py --device cpu --budget 0.5 \
    --cases 784-10-n16-e1,784-10-n32-e1,64-10-n16-e1,784-32-10-n16-e1,784-10-n16-pool64 \
    --json "$OUT/bench_cpu.json" 2>&1 | tee -a "$OUT/bench_cpu.log"
fi
echo "== done in $(( $(date +%s) - start ))s, parts $PARTS, rc=$rc" | tee -a "$OUT/env.txt"
exit $rc
