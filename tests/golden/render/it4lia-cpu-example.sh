#!/bin/bash
#SBATCH --job-name=sensor-etl.aif-render
#SBATCH --account=AIFAC_F02_378
#SBATCH --partition=dcgp_usr_prod
#SBATCH --qos=normal
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --chdir=/leonardo_work/AIFAC_F02_378/alice/aif/sensor-etl/aif-render
#SBATCH --output=/leonardo_work/AIFAC_F02_378/alice/aif/sensor-etl/aif-render/slurm-%j.out
# aif 0.1.0: cpu-example.toml (sha256 000000000000) for it4lia (IT4LIA AI Factory), partition dcgp_usr_prod
set -eo pipefail

export AIF_JOB_ID=aif-render
export AIF_SITE=it4lia
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# the job
srun bash -c 'echo "rows: $(wc -l < input.csv)"
'

