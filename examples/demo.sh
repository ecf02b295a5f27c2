#!/usr/bin/env bash
# `make demo`: bring up the local Slurm sandbox, submit the demo job without
# naming a site, follow it live, show its output and fetch its results.
set -euo pipefail
cd "$(dirname "$0")/.."
AIF=${AIF:-.venv/bin/aif}

step() { printf '\n\033[1m$ aif %s\033[0m\n' "$*"; "$AIF" "$@"; }

step sandbox up
step sites
printf '\n\033[1m$ aif submit examples/ehr-gpu-demo.toml\033[0m\n'
submitted=$("$AIF" submit examples/ehr-gpu-demo.toml --json)
job=$(printf '%s' "$submitted" | "${PYTHON:-.venv/bin/python}" -c 'import json, sys; job = json.load(sys.stdin)[0]; print(job["id"])')
printf '%s\n' "$submitted"
step wait "$job"
step logs "$job"
step fetch "$job" "demo-results/$job"
step status "$job"
cat <<MSG

The job ran on a real Slurm cluster, reached over SSH. To go further:
  $AIF list                          every job aif submitted
  $AIF render examples/clinical-bert.toml --site lumi --account project_465000123
                                     the same kind of job as LUMI would get it
  $AIF submit --help                 arrays, dependencies (--after), --json, --dry-run
  $AIF sandbox down                  stop the sandbox
MSG
