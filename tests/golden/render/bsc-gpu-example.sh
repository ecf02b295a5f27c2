#!/bin/bash
#SBATCH --job-name=clinical-bert-finetune.aif-render
#SBATCH --account=ehpc536
#SBATCH --partition=acc
#SBATCH --qos=acc_ehpc
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=80
#SBATCH --time=02:00:00
#SBATCH --chdir=/gpfs/scratch/ehpc536/alice/aif/runs/clinical-bert-finetune
#SBATCH --output=/gpfs/scratch/ehpc536/alice/aif/runs/clinical-bert-finetune/slurm-%j.out
# aif 0.1.0: gpu-example.toml (sha256 000000000000) for bsc (BSC AI Factory), partition acc
# memory_per_node 120G is not sent: bsc does not accept --mem
set -eo pipefail

export AIF_JOB_ID=aif-render
export AIF_SITE=bsc
export HF_HOME=/tmp/hf
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi
module load singularity

# the job
singularity exec --nv docker://nvcr.io/nvidia/pytorch:24.05-py3 python train.py --epochs 3

