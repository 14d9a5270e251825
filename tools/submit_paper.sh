#!/usr/bin/env bash
# On the login node: check the plan, then submit training (2 nodes x 8 GPUs) and, after it
# succeeds, the evaluation (1 GPU). Run `python -m zephyr_lib fetch --profile paper` first when
# the compute nodes have no internet, and export HF_HUB_OFFLINE=1 before this script.
#
#   bash tools/submit_paper.sh            # PROFILE=handbook bash tools/submit_paper.sh
set -euo pipefail
PROFILE=${PROFILE:-paper}
cd "$(dirname "$0")/.."
PYTHON=${ZEPHYR_PYTHON:-$(command -v python3 || command -v python || true)}
if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import zephyr_lib" 2>/dev/null; then
  echo "error: no python with zephyr_lib: activate the paper environment first or set ZEPHYR_PYTHON" >&2
  exit 2
fi
export PROFILE ZEPHYR_PYTHON="$PYTHON"
if [ "${ZEPHYR_SKIP_DRY_RUN:-0}" != "1" ]; then  # the dry run includes the preflight (zephyr check)
  "$PYTHON" -m zephyr_lib run --profile "$PROFILE" --dry-run --gpus-per-node 8 --num-machines 2 > "dry-run-$PROFILE.log" \
    || { echo "error: the dry run failed: see dry-run-$PROFILE.log (FAIL lines)" >&2; exit 1; }
fi
train=$(sbatch --parsable --export=ALL tools/slurm_example.sh)
train=${train%%;*}
evaluation=$(sbatch --parsable --export=ALL --dependency=afterok:"$train" tools/slurm_eval.sh)
echo "submitted: training job $train (2 x 8 GPUs), evaluation job ${evaluation%%;*} (1 GPU, after $train succeeds)"
