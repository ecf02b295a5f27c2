#!/bin/bash -l
#SBATCH --job-name=clinical-bert-finetune.aif-render
#SBATCH --account=project_465000123
#SBATCH --partition=small-g
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=28
#SBATCH --mem=120G
#SBATCH --time=02:00:00
#SBATCH --chdir=/scratch/project_465000123/alice/aif/runs/clinical-bert-finetune
#SBATCH --output=/scratch/project_465000123/alice/aif/runs/clinical-bert-finetune/slurm-%j.out
# aif 0.1.0: gpu-example.toml (sha256 000000000000) for lumi (LUMI AI Factory), partition small-g
set -eo pipefail

export AIF_JOB_ID=aif-render
export AIF_SITE=lumi
export HF_HOME=/tmp/hf
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# the job
singularity exec docker://nvcr.io/nvidia/pytorch:24.05-py3 python train.py --epochs 3

