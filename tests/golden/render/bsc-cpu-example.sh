#!/bin/bash
#SBATCH --job-name=sensor-etl.aif-render
#SBATCH --account=ehpc536
#SBATCH --partition=gpp
#SBATCH --qos=gp_ehpc
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --chdir=/gpfs/scratch/ehpc536/alice/aif/sensor-etl/aif-render
#SBATCH --output=/gpfs/scratch/ehpc536/alice/aif/sensor-etl/aif-render/slurm-%j.out
# aif 0.1.0: cpu-example.toml (sha256 000000000000) for bsc (BSC AI Factory), partition gpp
set -eo pipefail

export AIF_JOB_ID=aif-render
export AIF_SITE=bsc
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# the job
srun bash -c 'echo "rows: $(wc -l < input.csv)"
'

