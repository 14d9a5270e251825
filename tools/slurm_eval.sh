#!/usr/bin/env bash
# Zephyr at paper scale: the EVALUATION job, one node, one GPU, after the training job
# (tools/slurm_example.sh). Generates MT-Bench and AlpacaEval answers for this run's models and the
# paper's published ones (eval.anchors), has today's judge score them all, runs lm-eval, then the
# results stage. Needs the judge's key in the environment (OPENAI_API_KEY), never in a file.
#
#   sbatch --dependency=afterok:<training job id> tools/slurm_eval.sh   # (tools/submit_paper.sh does this)
#SBATCH --job-name=zephyr-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=zephyr-eval-%j.log
set -euo pipefail

PROFILE=${PROFILE:-paper}
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
mkdir -p runs/logs
# the interpreter of the environment active at submission (SLURM runs a copy of this script, so the
# helper is read from the submit directory)
source tools/slurm_common.sh
# the run starts with the preflight (judge answers, no retired model, hub cache or token): it fails in seconds
srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-16}" "$PYTHON" -m zephyr_lib run --profile "$PROFILE" --stages eval,results
