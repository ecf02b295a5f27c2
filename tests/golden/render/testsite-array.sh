#!/bin/bash
#SBATCH --job-name=aif-array.abababababababababababababababab
#SBATCH --account=proj_1
#SBATCH --partition=cpu
#SBATCH --qos=cpuq
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:10:00
#SBATCH --array=0-2
#SBATCH --chdir=/work/proj_1/alice/.aif/arrays/abababababababababababababababab
#SBATCH --output=/work/proj_1/alice/.aif/arrays/abababababababababababababababab/slurm-%A_%a.out
#SBATCH --comment=aif:aif-tok-abababababababababababababababab
# aif 0.1.0: 3 specs as one array for testsite (Test Factory), partition cpu
set -eo pipefail

# Task i is spec i: its id, variables, directory and job; every value quoted.
case "${SLURM_ARRAY_TASK_ID:-}" in
0)
    # prep.toml (sha256 000000000000)
    export AIF_JOB_ID=aif-aaaa
    export AIF_SITE=testsite
    export STAGE='a b'
    aif_workdir=/work/proj_1/alice/runs/prep
    aif_job() {
        echo prep
    }
    ;;
1)
    # train.toml (sha256 000000000000)
    export AIF_JOB_ID=aif-bbbb
    export AIF_SITE=testsite
    aif_workdir=/work/proj_1/alice/train/aif-bbbb
    aif_job() {
        eval 'echo $AIF_JOB_ID
esac
'
    }
    ;;
2)
    # eval.toml (sha256 000000000000)
    export AIF_JOB_ID=aif-cccc
    export AIF_SITE=testsite
    export AIF_INPUT_EHR_DEMO=/data/proj_1/ehr
    aif_workdir=/work/proj_1/alice/eval/aif-cccc
    aif_job() {
        echo eval
    }
    ;;
*)
    echo "aif: task ${SLURM_ARRAY_TASK_ID:-?} is not one of this array's" >&2
    exit 64
    ;;
esac
mkdir -p -- "$aif_workdir"
cd -- "$aif_workdir"
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# site set-up
aif_test_setup

# the job
aif_job

