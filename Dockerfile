# GPU runtime image for vsml: numpy + ONNX Runtime GPU + vsml_runtime, NO torch, and an exported model.
#
#   DOCKER_BUILDKIT=1 docker build -t vsml-runtime .                   # the shipped pretrained learner
#   DOCKER_BUILDKIT=1 docker build -t vsml-runtime --build-arg MODEL_PT=runs/bptt/model.pt .  # yours
#   docker run --rm --gpus all vsml-runtime                            # runs examples/runtime_example.py
#   docker run --rm --gpus all vsml-runtime --device cuda --steps 5000
#   docker run --rm vsml-runtime --device cpu                          # no GPU: the CPU provider
#
# Stage 1 provides /models/model.onnx + model.init.onnx: by default the pretrained learner the package
# ships (vsml_runtime/assets/pretrained.onnx, see its MODEL_CARD.md; no torch needed); with MODEL_PT, a
# model.pt inside the build context exported with torch (CPU wheel, installed only then). Stage 2 is the
# runtime only: the exported files, the package installed with its `gpu` extra (onnxruntime-gpu), and
# the example. ONNX Runtime GPU 1.31 is built for CUDA 13 and cuDNN 9: the CUDA runtime image brings
# CUDA 13 (cuBLAS, cuFFT, cuRAND), cuDNN comes as onnxruntime-gpu's `cudnn` extra (pip). Override
# CUDA_IMAGE to match your driver. The host needs the NVIDIA driver and the NVIDIA Container Toolkit.
# .dockerignore keeps the build context small (.venv, .git, runs/ except its model.pt files).
# tests/test_docker.py checks, without a Docker engine, that every COPY source is in the context and
# runs stage 1's model step and the image's entry command in a venv laid out as the image is.

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------- export (build only)
FROM python:3.12-slim AS export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY train ./train
COPY export ./export
COPY vsml_runtime ./vsml_runtime
# MODEL_PT: a model.pt inside the build context (e.g. runs/bptt/model.pt); empty = the shipped learner
ARG MODEL_PT=""
RUN if [ -n "$MODEL_PT" ]; then \
      pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu \
      && pip install --no-cache-dir ".[train,cpu]"; fi
RUN --mount=type=bind,source=.,target=/ctx mkdir -p /models \
 && if [ -n "$MODEL_PT" ]; then cp "/ctx/$MODEL_PT" /models/model.pt && vsml-export /models/model.pt /models/model.onnx; \
    else cp vsml_runtime/assets/pretrained.onnx /models/model.onnx \
      && cp vsml_runtime/assets/pretrained.init.onnx /models/model.init.onnx; fi

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
