#!/usr/bin/env bash
# Zephyr at paper scale on 2 nodes x 8 GPUs under SLURM: one task per node, the same command on
# every node. Node 0 runs the pipeline (`python -m zephyr_lib run`); each training stage's
# `accelerate launch` starts its 8 processes there, and the other node joins each multi-node
# training run with the same command and its own --machine_rank (zephyr_lib.launch_cli.follow).
#
#   sbatch tools/slurm_example.sh                      # the whole paper profile
#   STAGES=sft sbatch tools/slurm_example.sh           # one stage (and what it needs, cached if done)
#
# Needs: the repository and runs/ on a filesystem shared by the nodes (DeepSpeed writes each rank's
# checkpoint shard there), the environment installed on every node (README: "Paper scale"), and the
# judge's key in the environment (never a config value). Check first, on any machine, without GPUs:
#   python -m zephyr_lib run --profile paper --dry-run --gpus-per-node 8 --num-machines 2
#SBATCH --job-name=zephyr-paper
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=runs/slurm-%j.log
set -euo pipefail

PROFILE=${PROFILE:-paper}
STAGES=${STAGES:-}
export PROFILE STAGES
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"

# Rendezvous: node 0 of the allocation, one port for the whole job. zephyr_lib.launch would read
# SLURM_NODEID and SLURM_JOB_NODELIST itself; they are set explicitly here to be visible in the log.
export ZEPHYR_MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export ZEPHYR_MAIN_PROCESS_PORT=${ZEPHYR_MAIN_PROCESS_PORT:-29500}
export NCCL_ASYNC_ERROR_HANDLING=1

# One task per node; inside it, ZEPHYR_MACHINE_RANK = SLURM_NODEID (0 on the first node).
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
  export ZEPHYR_MACHINE_RANK=$SLURM_NODEID
  exec .venv/bin/python -m zephyr_lib.launch_cli node --profile "$PROFILE" ${STAGES:+--stages "$STAGES"}
'
