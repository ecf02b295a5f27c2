"""Rendering: site rules, partition and QOS choice, quoting. Pure and offline."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import NoFit
from gateway.profiles import load_profile
from gateway.rendering import choose_partition, render_batch_script
from gateway.spec import JobSpec, load_spec, parse_spec

DATA = Path(__file__).resolve().parents[1] / "data"
TESTSITE = load_profile(DATA / "profiles" / "testsite.toml")


def spec_from(doc: dict[str, object]) -> JobSpec:
    return parse_spec(doc, source="t.toml", sha256="0" * 64)


def gpu_spec(**resources: object) -> JobSpec:
    res: dict[str, object] = {"gpus_per_node": 4, "walltime": "02:00:00"}
    res.update(resources)
    return spec_from({"job": {"name": "g", "command": ["true"]}, "resources": res})


def directives(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_gpu_job_goes_to_the_gpu_partition_with_the_rules_of_the_site() -> None:
    rendered = render_batch_script(gpu_spec(), TESTSITE, account="proj_1", user="alice")
    lines = directives(rendered.script)
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --gres=gpu:a100:4" in lines  # gres-typed
    assert "#SBATCH --cpus-per-task=16" in lines  # 4 CPUs per GPU
    assert "#SBATCH --qos=normal" in lines  # 2 h is over the short QOS's hour
    assert "#SBATCH --exclusive" in lines
    assert "#SBATCH --account=proj_1" in lines
    assert rendered.workdir == "/work/proj_1/alice/g/aif-render"
    assert rendered.stdout_path == "/work/proj_1/alice/g/aif-render/slurm-%j.out"


def test_qos_follows_size_and_time() -> None:
    short = choose_partition(gpu_spec(walltime="00:30:00", nodes=2), TESTSITE)
    assert short.qos == "short"
    normal = choose_partition(gpu_spec(walltime="00:30:00", nodes=3), TESTSITE)
    assert normal.qos == "normal"


def test_cpu_job_never_lands_on_a_gpu_partition() -> None:
    spec = load_spec(DATA / "specs" / "cpu-example.toml")
    choice = choose_partition(spec, TESTSITE)
    assert choice.partition.name == "cpu" and choice.qos == "cpuq"


def test_no_fit_says_why_for_each_partition() -> None:
    with pytest.raises(NoFit) as info:
        choose_partition(gpu_spec(gpus_per_node=8), TESTSITE)
    message = info.value.message
    assert "cpu: has no GPUs" in message
    assert "gpu: 8 GPUs per node asked, 4 available" in message
    assert info.value.exit_code == 4


def test_no_qos_is_a_misfit_when_the_site_requires_one() -> None:
    with pytest.raises(NoFit, match="no QOS allows 5 nodes"):
        choose_partition(gpu_spec(nodes=5), TESTSITE)


def test_enforced_cpus_per_gpu() -> None:
    strict = replace(TESTSITE, slurm=replace(TESTSITE.slurm, enforce_cpus_per_gpu=True))
    with pytest.raises(NoFit, match="cpus_per_task must be 16"):
        choose_partition(gpu_spec(cpus_per_task=8), strict)
    assert choose_partition(gpu_spec(cpus_per_task=16), strict).cpus_per_task == 16


def test_memory_not_sent_where_the_site_forbids_it() -> None:
    no_mem = replace(TESTSITE, slurm=replace(TESTSITE.slurm, send_memory=False))
    script = render_batch_script(gpu_spec(memory_per_node="64G"), no_mem, account="proj_1", user="a").script
    assert "--mem" not in "\n".join(directives(script))
    assert "# memory_per_node 64G is not sent: testsite does not accept --mem" in script
    script = render_batch_script(gpu_spec(memory_per_node="64G"), TESTSITE, account="proj_1", user="a").script
    assert "#SBATCH --mem=64G" in script


def test_array_and_token() -> None:
    spec = spec_from(
        {
            "job": {"name": "arr", "command": ["true"]},
            "resources": {"walltime": "00:10:00"},
            "array": {"size": 10, "parallel": 3},
        }
    )
    rendered = render_batch_script(spec, TESTSITE, account="proj_1", user="a", token="tok123")
    assert "#SBATCH --array=0-9%3" in rendered.script
    assert "#SBATCH --comment=aif:tok123" in rendered.script
    assert rendered.stdout_path.endswith("slurm-%A_%a.out")


HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "; touch PWNED",
    "' ; touch PWNED ; '",
    '" ; touch PWNED ; "',
    "a\nb\n#SBATCH --partition=evil\ntouch PWNED",
    "\\",
    "${IFS}touch${IFS}PWNED",
    "| touch PWNED",
    "&& touch PWNED",
]


def test_hostile_strings_run_as_literal_data_under_bash(tmp_path: Path) -> None:
    """Every free-text field, rendered and executed by bash: only literal output, nothing runs."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in {
        "aif_test_setup": 'printf "SETUP:%s\\n" "$@"',
        "aif_test_module": 'printf "MODULE:%s\\n" "$@"',
        "aif_test_container": 'shift; printf "IMAGE:%s\\n" "$1"; shift; exec "$@"',
        "srun": 'exec "$@"',
    }.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    variables = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    spec = spec_from(
        {
            "job": {"name": "hostile", "command": ["printf", "ARG:%s\\n", *HOSTILE]},
            "resources": {"nodes": 1, "tasks_per_node": 2, "walltime": "00:05:00"},
            "environment": {
                "container": "docker://x/$(touch${IFS}PWNED)",
                "modules": ["m;touch${IFS}PWNED", "$(touch${IFS}PWNED)"],
                "variables": variables,
            },
        }
    )
    rendered = render_batch_script(spec, TESTSITE, account="proj_1", user="a")
    # the directive block is exactly what aif wrote: nothing hostile got into it
    block = rendered.script.split("\nset -eo pipefail", 1)[0]
    assert "evil" not in block and "PWNED" not in block
    # the script's body, with a listing of the variables appended, run by bash
    script = rendered.script + "".join(f'printf "{k}=%s\\n" "${k}"\n' for k in variables)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "PWNED").exists()
    out = result.stdout
    for value in HOSTILE:
        for piece in value.split("\n"):
            assert f"ARG:{piece}" in out or piece in out
    for key, value in variables.items():
        assert f"{key}={value}" in out
    assert "MODULE:m;touch${IFS}PWNED" in out and "MODULE:$(touch${IFS}PWNED)" in out
    assert "IMAGE:docker://x/$(touch${IFS}PWNED)" in out


def test_a_users_script_cannot_add_directives(tmp_path: Path) -> None:
    spec = spec_from(
        {
            "job": {"name": "s", "script": "#SBATCH --partition=evil\necho ok\n"},
            "resources": {"walltime": "00:05:00"},
        }
    )
    script = render_batch_script(spec, TESTSITE, account="proj_1", user="a").script
    lines = script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    evil = lines.index("#SBATCH --partition=evil")
    assert evil > first_command  # sbatch stops reading directives at the first command


def test_datasets_become_environment_variables() -> None:
    spec = spec_from(
        {
            "job": {"name": "d", "command": ["true"]},
            "data": {"inputs": ["ehr-demo"]},
        }
    )
    script = render_batch_script(spec, TESTSITE, account="proj_1", user="a").script
    assert "export AIF_INPUT_EHR_DEMO=/data/proj_1/ehr" in script
    missing = spec_from({"job": {"name": "d", "command": ["true"]}, "data": {"inputs": ["other"]}})
    with pytest.raises(NoFit, match="dataset other"):
        render_batch_script(missing, TESTSITE, account="proj_1", user="a")


def test_the_workdir_at_the_site_is_bounded() -> None:
    """Each part is bounded at validation; their combination at a site is checked when rendering."""
    from gateway.errors import SpecError

    deep = replace(TESTSITE, slurm=replace(TESTSITE.slurm, work_area="/" + "{user}/" * 140))
    spec = spec_from({"job": {"name": "n" * 128, "command": ["true"], "workdir": "{name}/{id}"}})
    assert len(render_batch_script(spec, deep, account=None, user="u").workdir) < 4000
    with pytest.raises(SpecError) as info:
        render_batch_script(spec, deep, account=None, user="u" * 32)
    message = str(info.value)
    assert message.startswith("t.toml: job.workdir: ")
    assert "at testsite the job's directory would be 4" in message
    assert "characters long (" in message and "; at most 4000 allowed" in message
