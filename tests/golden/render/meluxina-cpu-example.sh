#!/bin/bash -l
#SBATCH --job-name=sensor-etl.aif-render
#SBATCH --account=p200981
#SBATCH --partition=cpu
#SBATCH --qos=short
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --chdir=/project/home/p200981/alice/aif/sensor-etl/aif-render
#SBATCH --output=/project/home/p200981/alice/aif/sensor-etl/aif-render/slurm-%j.out
# aif 0.1.0: cpu-example.toml (sha256 000000000000) for meluxina (L-AI Factory), partition cpu
set -eo pipefail

export AIF_JOB_ID=aif-render
export AIF_SITE=meluxina
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# the job
srun bash -c 'echo "rows: $(wc -l < input.csv)"
'

