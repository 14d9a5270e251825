#!/usr/bin/env bash
# Zephyr at paper scale on 2 nodes x 8 GPUs under SLURM: the TRAINING job. One task per node, the
# same command on every node. Node 0 runs the pipeline (`python -m zephyr_lib run`) up to dDPO; each
# training stage's `accelerate launch` starts its 8 processes there, and the other node joins each
# multi-node training run with its own --machine_rank (zephyr_lib.launch_cli.follow). The evaluation is
# its own 1-GPU job (tools/slurm_eval.sh), so the 16 GPUs are not held while it generates and judges.
#
#   bash tools/submit_paper.sh                          # login node: dry run + preflight, then both jobs
#   python -m zephyr_lib run --profile paper --dry-run  # the check alone, on any machine
#   sbatch tools/slurm_example.sh                       # training only (base, curate, sft, aif, dpo)
#   STAGES=sft sbatch tools/slurm_example.sh            # one stage (and what it needs, cached if done)
#
# Needs: the repository and runs/ on a filesystem shared by the nodes (DeepSpeed writes each rank's
# checkpoint shard there); the environment installed and ACTIVE when you call sbatch (its python is
# used on every node; or set ZEPHYR_PYTHON); HF_TOKEN for the gated mistralai/Mistral-7B-v0.1 unless
# `python -m zephyr_lib fetch --profile paper` already filled the hub cache and HF_HUB_OFFLINE=1.
#SBATCH --job-name=zephyr-paper
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=zephyr-train-%j.log
# (--output is relative to the submit directory, which exists; SLURM does not create folders for it.)
set -euo pipefail

PROFILE=${PROFILE:-paper}
STAGES=${STAGES:-dpo}
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
mkdir -p runs/logs

# the interpreter of the environment active at submission (SLURM runs a copy of this script, so the
# helper is read from the submit directory)
source tools/slurm_common.sh
# The gated base model needs a token on the nodes, unless everything is already in the hub cache.
if [ "${HF_HUB_OFFLINE:-0}" != "1" ] && [ -z "${HF_TOKEN:-}" ] && [ ! -s "${HF_HOME:-$HOME/.cache/huggingface}/token" ]; then
  echo "error: HF_TOKEN is not set: mistralai/Mistral-7B-v0.1 is gated (accept its license on the hub), or run" \
       "'python -m zephyr_lib fetch --profile $PROFILE' on the login node and submit with HF_HUB_OFFLINE=1" >&2
  exit 2
fi
export PROFILE STAGES PYTHON

# Rendezvous: node 0 of the allocation, one port for the whole job. zephyr_lib.launch would read
# SLURM_NODEID and SLURM_JOB_NODELIST itself; they are set explicitly here to be visible in the log.
export ZEPHYR_MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export ZEPHYR_MAIN_PROCESS_PORT=${ZEPHYR_MAIN_PROCESS_PORT:-29500}
export NCCL_ASYNC_ERROR_HANDLING=1

# One task per node; inside it, ZEPHYR_MACHINE_RANK = SLURM_NODEID (0 on the first node). Since
# SLURM 22.05 srun no longer inherits --cpus-per-task from the allocation: pass it explicitly.
srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-64}" --kill-on-bad-exit=1 bash -c '
  export ZEPHYR_MACHINE_RANK=$SLURM_NODEID
  exec "$PYTHON" -m zephyr_lib.launch_cli node --profile "$PROFILE" ${STAGES:+--stages "$STAGES"}
'
