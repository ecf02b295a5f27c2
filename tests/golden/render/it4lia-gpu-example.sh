#!/bin/bash
#SBATCH --job-name=clinical-bert-finetune.aif-render
#SBATCH --account=AIFAC_F02_378
#SBATCH --partition=boost_usr_prod
#SBATCH --qos=normal
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --mem=120G
#SBATCH --time=02:00:00
#SBATCH --chdir=/leonardo_work/AIFAC_F02_378/alice/aif/runs/clinical-bert-finetune
#SBATCH --output=/leonardo_work/AIFAC_F02_378/alice/aif/runs/clinical-bert-finetune/slurm-%j.out
# aif 0.1.0: gpu-example.toml (sha256 000000000000) for it4lia (IT4LIA AI Factory), partition boost_usr_prod
set -eo pipefail

export AIF_JOB_ID=aif-render
export AIF_SITE=it4lia
export HF_HOME=/tmp/hf
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# the job
singularity exec --nv docker://nvcr.io/nvidia/pytorch:24.05-py3 python train.py --epochs 3

