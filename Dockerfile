# GPU runtime image for vsml: numpy + ONNX Runtime GPU + vsml_runtime, NO torch, and an exported model.
#
#   DOCKER_BUILDKIT=1 docker build -t vsml-runtime .                   # demo model (random V_M)
#   DOCKER_BUILDKIT=1 docker build -t vsml-runtime --build-arg MODEL_PT=runs/best/model.pt .  # yours
#   docker run --rm --gpus all vsml-runtime                            # runs examples/runtime_example.py
#   docker run --rm --gpus all vsml-runtime --device cuda --steps 5000
#   docker run --rm vsml-runtime --device cpu                          # no GPU: the CPU provider
#
# Stage 1 exports model.pt -> model.onnx + model.init.onnx with torch (CPU wheel); stage 2 is the
# runtime only: the exported files, the package installed with its `gpu` extra (onnxruntime-gpu), and
# the example. ONNX Runtime GPU 1.31 is built for CUDA 13 and cuDNN 9: the CUDA runtime image brings
# CUDA 13 (cuBLAS, cuFFT, cuRAND), cuDNN comes as onnxruntime-gpu's `cudnn` extra (pip). Override
# CUDA_IMAGE to match your driver. The host needs the NVIDIA driver and the NVIDIA Container Toolkit.
# Keep the build context small with a .dockerignore (.venv, runs, .whl, .git).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------- export (build only)
FROM python:3.12-slim AS export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY train ./train
COPY export ./export
COPY vsml_runtime ./vsml_runtime
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir ".[train,cpu]"
# MODEL_PT: a model.pt inside the build context; empty = a demo model with random V_M (it runs, it
# does not learn well: train one with vsml-train for real use)
ARG MODEL_PT=""
RUN --mount=type=bind,source=.,target=/ctx mkdir -p /models \
 && if [ -n "$MODEL_PT" ]; then cp "/ctx/$MODEL_PT" /models/model.pt; \
    else python -c "from vsml_train import VSMLConfig, init_params; \
from vsml_train.model.model_file import ModelFile, save_model; \
c = VSMLConfig(layer_norm=True, backward_pass=True); \
save_model('/models/model.pt', ModelFile(c, init_params(c, 0), {'method': 'random (demo)'}))"; fi \
 && vsml-export /models/model.pt /models/model.onnx

# ---------------------------------------------------------------------------- runtime
FROM ${CUDA_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/vsml
ENV PATH=/opt/vsml/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY train ./train
COPY export ./export
COPY vsml_runtime ./vsml_runtime
# the runtime only: numpy + onnxruntime-gpu (+ cuDNN as a pip package); no torch, no onnx
RUN pip install --no-cache-dir ".[gpu]" "onnxruntime-gpu[cudnn]" \
 && python -c "import sys, vsml_runtime; from vsml_runtime import Learner; assert 'torch' not in sys.modules"
COPY examples/runtime_example.py ./examples/
COPY --from=export /models/model.onnx /models/model.init.onnx /models/
ENTRYPOINT ["python", "examples/runtime_example.py", "--model", "/models/model.onnx"]
CMD ["--device", "auto"]
