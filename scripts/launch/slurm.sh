#!/usr/bin/env bash
# Multi-node pretraining under SLURM: one process per node, each driving all of its GPUs.
#
#   sbatch --nodes=4 scripts/launch/slurm.sh configs/pretrain/internlm2_7b.py runs/internlm2-7b [--set k=v ...]
#
# scripts/pretrain.py forms the process group from SLURM's environment (SLURM_NTASKS,
# SLURM_PROCID, the first host of SLURM_JOB_NODELIST as coordinator on MASTER_PORT).
# Rerunning the same command resumes from the latest checkpoint in the run directory, so
# --requeue makes preempted jobs continue. Plan memory first: scripts/plan.py --devices N.
#SBATCH --job-name=intern-jax-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --output=slurm-%j.out

set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: sbatch --nodes=N $0 CONFIG RUN_DIR [extra pretrain.py arguments]" >&2
    exit 2
fi
CONFIG=$1
RUN_DIR=$2
shift 2

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-12355}
# overlap collectives with compute on GPUs; keep XLA from grabbing memory the input pipeline needs
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

echo "nodes=$SLURM_JOB_NUM_NODES coordinator=$MASTER_ADDR:$MASTER_PORT config=$CONFIG run=$RUN_DIR"
srun --kill-on-bad-exit=1 "$PYTHON" "$REPO/scripts/pretrain.py" --config "$CONFIG" --output "$RUN_DIR" --quiet "$@"
