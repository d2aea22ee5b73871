#!/usr/bin/env bash
# Issue 10's prepared meta-training run for a lent GPU: one device call of at most 600 s.
#
# Online truncated BPTT (docs/model.md §6.3) from the shipped default (learner 12; its config, online-norm prior
# 10, centring prior 0.3 and the four-expert mixture with its unseen-class penalty included, comes with --init, so
# the loss is the mixture's and V_M learns to complement the nearest-class-mean, naive-Bayes and LDA experts) with the recipe of learners 6 and 7 at a larger
# scale: MNIST's TRAINING split randomly projected 784 -> 784 (labels permuted per episode) and the synthetic
# 'tabular' family (32 features, 2 classes, skewed priors, rare indicators; projected to 784 as well, since
# the task mix projects whole iterations); EPISODES episodes of STEPS steps per iteration, an Adam step every
# WINDOW steps.
# Training stops after TRAIN_S seconds (SIGINT: the run loop checkpoints), the checkpoint becomes model.pt
# (`vsml-train --resume` to the iteration reached), and the result and the default are scored side by side on
# the selection sets of bench/select_front_ends.py (MNIST-train, the dev tables, the synthetic sparse family).
# No evaluation set (Fashion-MNIST, MNIST test, the tabular suite) is read here.
#
# On the CPU the same mix WITHOUT the projection made learner 5 worse within 10 iterations (the synthetic
# sparse family's first 50 fell from 0.855 to 0.15-0.29); with it, 20 iterations gave learner 6 and 40 more
# under prior 10 learner 7 (model card); learners 8, 9 and 10 are learner 7 with a centring prior of its own,
# then the NCM mixture, then its GNB expert (config only).
# Ship a result only if select.txt shows it above the default by the selection score and it then passes the
# evaluations once; memory is about 130 MB per episode-step of a window (eager), so EPISODES x WINDOW = 400
# needs about 52 GB.
#
#   run(command="OUT=$OUT bash bench/gpu_metatrain.sh", carry=["shared-data"], timeout_s=600)
#
# Datasets: shared/datasets beside or above the checkout, $VSML_DATA_DIR, or a carried folder shared-data/
# (mkdir -p shared-data && cp -r ../shared/datasets/mnist shared-data/; about 1.6 MB; ignored by git).
# Results in $OUT (the device's out folder) or bench/results/metatrain-DATE/: run/ (model.pt, metrics.jsonl,
# checkpoint.pt), train.log, select.txt, env.txt. Copy them to bench/results/ with a note before citing them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/metatrain-$(date +%F)}
TRAIN_S=${TRAIN_S:-330}
EPISODES=${EPISODES:-8}
STEPS=${STEPS:-500}
WINDOW=${WINDOW:-50}
LR=${LR:-0.00002}
# per-class contrast of the MNIST episodes (docs/model.md §6.5; "none" turns it off): the CPU runs from
# learner 8 found the default short of nearest-class-mean where classes differ in brightness (model card,
# "Learner 8"); 40 and 100 iterations at lr 6e-5 on one core moved that screen by under 0.01, so it is a
# bet on scale, and the selection score below still decides
CLASS_CONTRAST=${CLASS_CONTRAST:-3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
[ -d shared-data ] && export VSML_DATA_DIR="$PWD/shared-data${VSML_DATA_DIR:+:$VSML_DATA_DIR}"

# the project's packages under their import names (the repo maps train/ -> vsml_train, export/ -> vsml_export)
PKGS=/tmp/vsml_pkgs
mkdir -p "$PKGS"
ln -sfn "$PWD/train" "$PKGS/vsml_train"
ln -sfn "$PWD/export" "$PKGS/vsml_export"
ln -sfn "$PWD/vsml_runtime" "$PKGS/vsml_runtime"
export PYTHONPATH="$PKGS${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
start=$(date +%s)
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  nproc; python3 --version; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
  echo "TRAIN_S=$TRAIN_S EPISODES=$EPISODES STEPS=$STEPS WINDOW=$WINDOW LR=$LR DEVICE=$DEVICE CLASS_CONTRAST=$CLASS_CONTRAST"
} 2>&1 | tee "$OUT/env.txt"

ARGS=(--method bptt --init vsml_runtime/assets/pretrained.pt --out "$OUT/run" --episodes "$EPISODES" --lr "$LR"
  --tasks.steps "$STEPS" --truncation "$WINDOW" --window-updates true --permute-labels true --project-dim 784
  --project-fraction 1.0 --synthetic tabular
  --synthetic-classes 2 --eval-every -1 --checkpoint-every 5 --seed 0 --device "$DEVICE" --progress false)
[ "$CLASS_CONTRAST" != none ] && ARGS+=(--class-contrast "$CLASS_CONTRAST")
train() { python3 -c "from vsml_train.cli_train import main; main()" "$@"; }
timeout -s INT -k 30 "$TRAIN_S" bash -c "$(declare -f train); train ${ARGS[*]@Q} --iterations 100000" \
  > "$OUT/train.log" 2>&1
reached=$(python3 - "$OUT/run/checkpoint.pt" <<'EOF'
import sys
from vsml_train.methods.checkpoint import load_checkpoint
print(load_checkpoint(sys.argv[1])["iteration"])
EOF
)
echo "trained to iteration $reached in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
train "${ARGS[@]}" --resume --iterations "$reached" >> "$OUT/train.log" 2>&1 || { echo "no model.pt"; exit 1; }
timeout 200 python3 bench/select_front_ends.py "$OUT/run/model.pt" "" 2>&1 | tee "$OUT/select.txt"
timeout 120 python3 bench/select_front_ends.py vsml_runtime/assets/pretrained.pt "" 2>&1 | tee -a "$OUT/select.txt"
echo "== done in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
