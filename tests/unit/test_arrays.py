"""Arrays of specs: the array script, which specs may share one, the submission program's
array path, matching one task to its spec, settling a lost array answer and cancelling one task.

Offline: bash runs the real scripts and programs with stand-in Slurm commands; the lifecycle
runs over the simulated site of test_lifecycle (fake transport, temporary ledger, fake clock).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import slurm
from gateway.arrays import (
    ARRAY_NAME_PREFIX,
    array_job_name,
    coalesce_key,
    group_by_key,
    plan_batches,
    render_array_script,
)
from gateway.errors import UsageError
from gateway.federation.snapshot import Snapshot, SnapshotStore
from gateway.lifecycle import cancel, refresh, stdout_path_of, submit
from gateway.profiles import load_profile
from gateway.site import JobQuery, confirm_in_accounting, confirm_in_queue
from gateway.slurm import jobcomp
from gateway.slurm.probe import ProbeResult
from gateway.spec import JobSpec, parse_spec
from gateway.states import JobState
from gateway.transports.fake import FakeTransport
from tests.unit.test_lifecycle import SITE, FakeClock, SimulatedSite, make_context
from tests.unit.test_render_golden import check_golden

DATA = Path(__file__).resolve().parents[1] / "data"
TESTSITE = load_profile(DATA / "profiles" / "testsite.toml")
TOKEN = "aif-tok-" + "ab" * 16
HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "; touch PWNED",
    "' ; touch PWNED ; '",
    "a\nb\n#SBATCH --partition=evil\ntouch PWNED",
    "\\",
    "${IFS}touch${IFS}PWNED",
    "esac",
    ";;",
]


def spec(name: str, source: str = "", **sections: dict[str, object]) -> JobSpec:
    job: dict[str, object] = {"name": name, "command": ["echo", name]}
    job.update(sections.pop("job", {}))
    job = {k: v for k, v in job.items() if v is not None}
    doc: dict[str, object] = {"job": job, "resources": {"walltime": "00:10:00"}, **sections}
    return parse_spec(doc, source=source or f"{name}.toml", sha256="0" * 64)


def recorded(name: str) -> str:
    return (DATA / "slurm" / name).read_text()


# -- the array script ---------------------------------------------------------------------


def test_golden_array_script() -> None:
    """Three specs of one shape: a command with variables and a dataset, a script, a container."""
    members = [
        (
            spec("prep", job={"workdir": "runs/{name}"}, environment={"variables": {"STAGE": "a b"}}),
            "aif-aaaa",
        ),
        (spec("train", job={"command": None, "script": "echo $AIF_JOB_ID\nesac\n"}), "aif-bbbb"),
        (spec("eval", data={"inputs": ["ehr-demo"]}), "aif-cccc"),
    ]
    rendered = render_array_script(members, TESTSITE, account="proj_1", user="alice", array_token=TOKEN)
    check_golden("testsite-array.sh", rendered.script)
    assert rendered.slurm_name == ARRAY_NAME_PREFIX + "ab" * 16 == array_job_name(TOKEN)
    assert [t.index for t in rendered.tasks] == [0, 1, 2]
    assert rendered.tasks[0].workdir == "/work/proj_1/alice/runs/prep"
    assert rendered.tasks[1].workdir == "/work/proj_1/alice/train/aif-bbbb"
    assert {t.stdout_path for t in rendered.tasks} == {f"{rendered.output_dir}/slurm-%A_%a.out"}
    assert rendered.output_dir == "/work/proj_1/alice/.aif/arrays/" + "ab" * 16


def stubs(directory: Path) -> dict[str, str]:
    """The test site's set-up, module and container commands, and srun, as harmless stand-ins."""
    directory.mkdir()
    for name, body in {
        "aif_test_setup": 'printf "SETUP:%s\\n" "$@"',
        "aif_test_module": 'printf "MODULE:%s\\n" "$@"',
        "aif_test_container": 'shift; printf "IMAGE:%s\\n" "$1"; shift; exec "$@"',
        "srun": 'exec "$@"',
    }.items():
        (directory / name).write_text(f"#!/bin/bash\n{body}\n")
        (directory / name).chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


def run_task(script: str, task: int, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """One task of an array script, as slurmstepd starts it."""
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_each_task_runs_its_own_spec_and_hostile_values_stay_data(tmp_path: Path) -> None:
    """Every free-text field of every task, run by bash as its task: only literal output,
    each task in its own directory with its own variables, nothing runs that a spec smuggled."""
    work = tmp_path / "work"
    profile = replace(TESTSITE, slurm=replace(TESTSITE.slurm, work_area=str(work)))
    variables = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    hostile_script = "\n".join(f"echo {shlex.quote(v)}" for v in HOSTILE) + "\n"
    members = [
        (
            spec(
                "cmd",
                job={"command": ["printf", "ARG:%s\\n", *HOSTILE]},
                environment={"variables": variables},
            ),
            "aif-c",
        ),
        (spec("scr", job={"command": None, "script": hostile_script}), "aif-s"),
        (spec("dir", job={"workdir": "dir+1/{id}", "command": ["pwd"]}), "aif-d"),
        # A bare esac or ;; in a user's script is that script's own syntax error, never the array's.
        (spec("bad", job={"command": None, "script": "echo before\nesac\n;;\n"}), "aif-b"),
    ]
    rendered = render_array_script(members, profile, account="proj_1", user="a", array_token=TOKEN)
    block = rendered.script.split("\nset -eo pipefail", 1)[0]
    assert "evil" not in block and "PWNED" not in block and "esac" not in block
    env = stubs(tmp_path / "bin")
    listing = "".join(f'printf "{k}=%s\\n" "${k}"\n' for k in variables)
    runs = []
    for task in rendered.tasks:
        assert not Path(task.workdir).exists()  # the task makes its own directory
        runs.append(run_task(rendered.script + listing, task.index, env, tmp_path))
    assert [r.returncode for r in runs] == [0, 0, 0, 2], [r.stderr for r in runs]
    # As in a single job's script: the commands before the error ran, then bash stopped.
    assert "syntax error" in runs[3].stderr and runs[3].stdout.endswith("before\n")
    assert not list(tmp_path.rglob("PWNED"))
    outputs = [r.stdout for r in runs]
    for value in HOSTILE:
        assert f"ARG:{value}\n" in outputs[0]
        assert f"{value}\n" in outputs[1]  # echoed literally by the user's own script
    for key, value in variables.items():
        assert f"{key}={value}" in outputs[0]
        assert f"{key}={value}" not in outputs[1]  # task 1 never sees task 0's variables
    assert outputs[2].splitlines()[1] == rendered.tasks[2].workdir  # it runs in its own directory
    assert all(out.startswith("SETUP:") for out in outputs[:3])
    unknown = run_task(rendered.script, 7, env, tmp_path)
    assert unknown.returncode == 64 and "task 7 is not one of this array's" in unknown.stderr


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_a_tasks_script_runs_as_a_single_jobs_would(tmp_path: Path) -> None:
    """The user's script runs in the batch shell (eval of its quoted text): set -e stops it."""
    work = tmp_path / "work"
    profile = replace(TESTSITE, slurm=replace(TESTSITE.slurm, work_area=str(work)))
    members = [
        (spec("a", job={"command": None, "script": "echo one\nfalse\necho never\n"}), "aif-a"),
        (spec("b", job={"command": None, "script": 'x=1\nif [ "$x" = 1 ]; then echo yes; fi\n'}), "aif-b"),
    ]
    rendered = render_array_script(members, profile, account="proj_1", user="a", array_token=TOKEN)
    env = stubs(tmp_path / "bin")
    runs = []
    for task in rendered.tasks:
        runs.append(
            subprocess.run(
                ["bash", "-c", rendered.script],
                env={**env, "SLURM_ARRAY_TASK_ID": str(task.index)},
                capture_output=True,
                text=True,
                timeout=30,
            )
        )
    assert runs[0].returncode == 1 and "one" in runs[0].stdout and "never" not in runs[0].stdout
    assert runs[1].returncode == 0 and runs[1].stdout.endswith("yes\n")


# -- which specs may share an array ------------------------------------------------------------


def key(s: JobSpec) -> object:
    return coalesce_key(s, TESTSITE, account="proj_1")


def test_specs_differing_only_in_what_each_runs_share_one_array() -> None:
    base = key(spec("a"))
    same = [
        spec("other-name"),
        spec("a", job={"command": ["python", "x.py"]}),
        spec("a", job={"command": None, "script": "echo hi"}),
        spec("a", environment={"variables": {"X": "1"}}),
        spec("a", job={"workdir": "elsewhere/{id}"}),
        spec("a", data={"inputs": ["ehr-demo"], "outputs": ["out/"]}),
    ]
    assert [key(s) for s in same] == [base] * len(same)


def test_specs_differing_in_a_directive_or_their_environment_do_not() -> None:
    base = key(spec("a"))
    other = [
        spec("a", resources={"walltime": "00:20:00"}),
        spec("a", resources={"walltime": "00:10:00", "nodes": 2}),
        spec("a", resources={"walltime": "00:10:00", "cpus_per_task": 4}),
        spec("a", resources={"walltime": "00:10:00", "memory_per_node": "4G"}),
        spec("a", resources={"walltime": "00:10:00", "gpus_per_node": 1}),
        spec("a", environment={"container": "docker://x"}),
        spec("a", environment={"modules": ["m"]}),
    ]
    keys = [key(s) for s in other]
    assert base not in keys and len(set(keys)) == len(keys)
    assert key(spec("a", array={"size": 3})) is None  # an array itself: never coalesced
    assert coalesce_key(spec("a"), TESTSITE, account="proj_2") != base  # another account


def test_groups_keep_first_appearance_and_are_cut_at_the_array_size() -> None:
    keys = ["x", "y", "x", None, "x", "y", "x", None]
    assert group_by_key(keys, 1001) == [[0, 2, 4, 6], [1, 5], [3], [7]]
    assert group_by_key(keys, 3) == [[0, 2, 4], [1, 5], [3], [6], [7]]
    assert group_by_key(["k"] * 2500, 1001) == [
        list(range(0, 1001)),
        list(range(1001, 2002)),
        list(range(2002, 2500)),
    ]
    with pytest.raises(ValueError):
        group_by_key(keys, 0)


def batches(specs: list[JobSpec], **options: object) -> list[tuple[int, ...]]:
    tokens = iter(f"aif-tok-{i:032x}" for i in range(100))
    plan = plan_batches(
        specs,
        [f"aif-{i}" for i in range(len(specs))],
        TESTSITE,
        account="proj_1",
        user="u",
        new_token=lambda: next(tokens),
        **{"max_tasks": 1001, **options},  # type: ignore[arg-type]
    )
    assert all((b.array is None) == (len(b.positions) == 1) for b in plan)
    return [b.positions for b in plan]


def test_batches_arrays_of_one_shape_and_singles_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [spec(f"s{i}") for i in range(5)] + [spec("long", resources={"walltime": "00:30:00"})]
    assert batches(specs) == [(0, 1, 2, 3, 4), (5,)]
    assert batches(specs, max_tasks=2) == [(0, 1), (2, 3), (4,), (5,)]
    assert batches(specs, coalesce=False) == [(i,) for i in range(6)]
    # A script Slurm would refuse as too large is cut in halves until each fits.
    monkeypatch.setattr("gateway.arrays.ARRAY_SCRIPT_MAX_BYTES", 1600)
    assert batches(specs[:5]) == [(0, 1), (2, 3, 4)]
    monkeypatch.setattr("gateway.arrays.ARRAY_SCRIPT_MAX_BYTES", 100)
    assert batches(specs[:5]) == [(i,) for i in range(5)]


# -- the submission program's array path (bash, stand-in sbatch and scontrol) --------------------

FAKE_SBATCH = r"""#!/bin/bash
printf '%s\n' "$*" >>"$AIF_FAKE_LOG"
for arg in "$@"; do
    if [ "$arg" = "--partition=nosuch" ]; then
        echo "sbatch: error: Invalid partition name specified" >&2
        exit 1
    fi
done
echo 77
"""


def run_program(
    tmp_path: Path, items: list[slurm.Submission], journal: Path, max_array: str = "1001", early: bool = True
) -> list[str]:
    """The real program over a fake sbatch and scontrol; ``early``: told that the bundle holds an
    array (it asks MaxArraySize as it starts), else it finds out once the items are read."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "MaxArraySize            = {max_array}"\n')
    for name in ("sbatch", "scontrol"):
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AIF_FAKE_LOG": str(tmp_path / "sbatch.log"),
    }
    result = subprocess.run(
        slurm.submission_argv(1, items if early else ()),
        input=slurm.build_submission_bundle(items, str(journal)),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


def array_item(tmp_path: Path, count: int, *extra: str) -> slurm.ArraySubmission:
    members = tuple(slurm.ArrayMember(f"{i:016x}-0.0", f"aif-tok-m{i}", f"aif-m{i}") for i in range(count))
    return slurm.ArraySubmission(
        "#!/bin/bash\ntrue\n", f"{tmp_path}/out;touch PWNED", TOKEN, members, tuple(extra)
    )


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
def test_the_program_claims_each_member_and_sends_one_array_of_those_claimed(tmp_path: Path) -> None:
    journal = tmp_path / "record"
    journal.mkdir()
    (journal / f"{1:016x}-0.0").write_text("intent\taif-tok-other\taif-other\n")  # another submission's
    single = slurm.SubmissionItem("#!/bin/bash\ntrue\n", "", (), "f" * 16 + "-0.0", "aif-tok-s", "aif-s")
    lines = run_program(tmp_path, [single, array_item(tmp_path, 5, "--dependency=afterok:5")], journal)
    outcomes = slurm.parse_submission_output("\n".join(lines), 6)
    assert [o.job_id for o in outcomes] == ["77", "77_0", None, "77_2", "77_3", "77_4"]
    assert outcomes[2].kind is slurm.Outcome.CLAIMED
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert len(calls) == 2 and calls[1] == "--parsable --array=0,2-4 --dependency=afterok:5"  # script: stdin
    assert (journal / f"{3:016x}-0.0").read_text() == (
        f"intent\taif-tok-m3\taif-m3\t{TOKEN}\t3\nanswer\t0\t77_3\n"
    )
    claim = {c.name: c for c in slurm_claims(journal)}[f"{3:016x}-0.0"]
    assert (claim.array_token, claim.array_task, claim.slurm_job_id) == (TOKEN, 3, "77_3")
    # The array's own directory only: each task makes its own when it starts.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["bin", "out;touch PWNED", "record"]
    assert not list(tmp_path.rglob("PWNED"))


def slurm_claims(journal: Path) -> list[object]:
    from gateway import journal as record

    text = "".join(
        f"line\t0\t{path.name}\t{line}\n"
        for path in sorted(journal.iterdir())
        for line in path.read_text().splitlines()
    )
    return list(record.parse_record(text + "end\n", 1).claims[0].values())


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
def test_arrays_and_single_jobs_in_one_bundle_answer_in_order(tmp_path: Path) -> None:
    journal = tmp_path / "record"
    journal.mkdir()

    def single(n: int) -> slurm.SubmissionItem:
        return slurm.SubmissionItem(
            "#!/bin/bash\ntrue\n", "", (), f"{n:016x}-9.0", f"aif-tok-s{n}", f"aif-s{n}"
        )

    two = replace(array_item(tmp_path, 2), members=array_item(tmp_path, 2).members[::-1])
    items: list[slurm.Submission] = [single(1), array_item(tmp_path, 3), single(2), two, single(3)]
    lines = run_program(tmp_path, items, journal)
    outcomes = slurm.parse_submission_output("\n".join(lines), 8)
    assert [o.job_id for o in outcomes] == ["77", "77_0", "77_1", "77_2", "77", None, None, "77"]
    # The second array's members are the first's claims in the other order: held already.
    assert [o.kind for o in outcomes[5:7]] == [slurm.Outcome.CLAIMED] * 2
    assert len((tmp_path / "sbatch.log").read_text().splitlines()) == 4  # 3 jobs, 1 array


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
@pytest.mark.parametrize("early", [True, False])
def test_an_array_over_the_sites_max_array_size_is_neither_claimed_nor_sent(
    tmp_path: Path, early: bool
) -> None:
    journal = tmp_path / "record"
    journal.mkdir()
    lines = run_program(tmp_path, [array_item(tmp_path, 5)], journal, max_array="4", early=early)
    outcomes = slurm.parse_submission_output("\n".join(lines), 5)
    assert {o.kind for o in outcomes} == {slurm.Outcome.TOO_LARGE}
    assert {slurm.max_array_size_of(o) for o in outcomes} == {4}
    assert not (tmp_path / "sbatch.log").exists() and list(journal.iterdir()) == []


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
def test_a_refused_array_is_refused_for_every_member_in_the_record(tmp_path: Path) -> None:
    journal = tmp_path / "record"
    journal.mkdir()
    lines = run_program(tmp_path, [array_item(tmp_path, 3, "--partition=nosuch")], journal)
    outcomes = slurm.parse_submission_output("\n".join(lines), 3)
    assert {o.kind for o in outcomes} == {slurm.Outcome.REFUSED}
    assert all(p.read_text().endswith("Invalid partition name specified\n") for p in journal.iterdir())


def test_answers_of_array_members_are_classified() -> None:
    assert slurm.classify_sbatch(0, 0, "123_4").job_id == "123_4"
    assert slurm.classify_sbatch(0, 0, "123_4;cluster").cluster == "cluster"
    too_large = slurm.classify_sbatch(0, slurm.TOO_LARGE_RC, "5 tasks, over MaxArraySize=4")
    assert too_large.kind is slurm.Outcome.TOO_LARGE and slurm.max_array_size_of(too_large) == 4
    assert slurm.max_array_size_of(slurm.classify_sbatch(0, 0, "1")) is None


# -- one task, confirmed by its array's token and its index -------------------------------------

A23 = "aif-tok-0123456789abcdef0123456789abcdef"
A29 = "aif-tok-fedcba9876543210fedcba9876543210"


def task_query(job_id: str, array_token: str) -> JobQuery:
    return JobQuery(job_id, f"own-{job_id}-{array_token[-4:]}", array_job_name(array_token), array_token)


def test_tasks_are_confirmed_in_squeue_by_their_arrays_token_and_index() -> None:
    records = slurm.parse_squeue(recorded("squeue-array-of-specs.stdout"))
    queries = [
        task_query("29_4", A29),  # still pending, in the range record 29_[3-5]
        task_query("29_0", A29),  # running
        task_query("29_1", A29),  # failed (exit 3), still in squeue
        task_query("23_5", A23),  # the last task keeps the array's raw id (23)
        task_query("29_4", A23),  # the right id, another array's token: a reused id
        task_query("29_9", A29),  # no such task
    ]
    found = confirm_in_queue(records, queries)
    seen = [found[q.token] for q in queries]
    assert [s.record.state if s.record else None for s in seen] == [
        JobState.PENDING,
        JobState.RUNNING,
        JobState.FAILED,
        JobState.COMPLETED,
        None,
        None,
    ]
    assert seen[0].record is not None and seen[0].record.job_id == "29_4" and seen[0].in_queue
    assert seen[2].record is not None and seen[2].record.exit_code == 3
    assert "another job" in seen[4].problem and "no longer in the queue" in seen[5].problem


def test_finished_tasks_are_read_from_the_job_completion_log_by_their_arrays_name() -> None:
    records = jobcomp.parse_jobcomp_tasks(recorded("jobcomp-array-of-specs.txt") + "@end\n")
    assert sorted(r.job_id for r in records) == [f"23_{i}" for i in range(6)]
    queries = [task_query(f"23_{i}", A23) for i in range(6)] + [task_query("23_1", A29)]
    found = confirm_in_accounting(records, queries, {})
    states = [found[q.token].record for q in queries]
    assert [r.state if r else None for r in states] == [
        JobState.COMPLETED,
        JobState.FAILED,
        *[JobState.COMPLETED] * 4,
        None,  # the name is another array's: not this task
    ]
    assert states[1] is not None and states[1].exit_code == 3 and states[1].raw_job_id == "25"
    with pytest.raises(jobcomp.JobcompUnreadable):
        jobcomp.parse_jobcomp_tasks(recorded("jobcomp-array-of-specs.txt"))
    with pytest.raises(ValueError):
        jobcomp.jobcomp_tasks_argv(["a b"])


def test_slurmdbd_records_a_task_as_arrayid_task() -> None:
    line = "\x1f".join(
        ["23_4", "28", "COMPLETED", "0:0", "standard", "n1", "", "", "", "", "", array_job_name(A23)]
    )
    records = slurm.parse_sacct(line + "\n")
    found = confirm_in_accounting(records, [task_query("23_4", A23), task_query("23_3", A23)], {})
    [four, three] = (found[task_query(t, A23).token].record for t in ("23_4", "23_3"))
    assert four is not None and four.state is JobState.COMPLETED and three is None


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_cancel_checks_the_arrays_name_once_then_signals_the_task_alone(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    for name, body in {
        "squeue": f'printf "squeue %s\\n" "$*" >>{log}\n'
        'case "$*" in *=5\\ *) printf "aif-array.x\\naif-array.x\\n" ;; *) echo other ;; esac',
        "scancel": f'printf "scancel %s\\n" "$*" >>{log}',
    }.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    argv = slurm.scancel_by_name_argv(
        [("5_1", "aif-array.x"), ("5_3", "aif-array.x"), ("7", "a.aif-y"), ("9_0", "aif-array.z")]
    )
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "job 9 is not aif-array.z now: 9_0 not signalled" in result.stderr
    assert log.read_text().splitlines() == [
        "squeue --noheader --states=all --jobs=5 --format=%j",
        "scancel -- 5_1",
        "scancel -- 5_3",
        "scancel --name=a.aif-y -- 7",
        "squeue --noheader --states=all --jobs=9 --format=%j",
    ]


# -- the lifecycle: submit, status, lost answers, reruns, cancel (simulated site) ----------------


def spec_files(tmp_path: Path, count: int, prefix: str = "s") -> list[str]:
    paths = []
    for i in range(count):
        path = tmp_path / f"{prefix}{i}.toml"
        path.write_text(f'[job]\nname = "{prefix}{i}"\ncommand = ["echo", "{i}"]\n')
        paths.append(str(path))
    return paths


def test_specs_of_one_shape_go_as_one_array_each_its_own_job(tmp_path: Path) -> None:
    site = SimulatedSite()
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    report = submit(ctx, spec_files(tmp_path, 5), site=SITE, key="k1")
    jobs = [r.job for r in report.jobs]
    assert site.sbatch_calls == 1
    assert [j.slurm_job_id for j in jobs] == [f"101_{i}" for i in range(5)]
    assert [j.array_task for j in jobs] == list(range(5)) and len({j.array_token for j in jobs}) == 1
    assert {j.slurm_name for j in jobs} == {array_job_name(jobs[0].array_token)}
    assert [r.how for r in report.jobs] == ["submitted"] * 5
    assert jobs[3].workdir == f"/work/proj_1/me/s3/{jobs[3].id}"
    assert stdout_path_of(jobs[3]).endswith("/slurm-101_3.out")
    again = refresh(ctx, [j.id for j in jobs])
    assert {j.state for j in again.jobs} == {JobState.PENDING} and again.in_queue == {j.id for j in jobs}
    with pytest.raises(UsageError, match="not an array job"):
        stdout_path_of(jobs[0], task=1)  # each spec stays its own job: no --task
    assert ctx.ledger.attempts(jobs[0].id)[0][2] == "accepted as Slurm job 101_0"


def test_no_coalesce_sends_each_spec_as_its_own_job(tmp_path: Path) -> None:
    site = SimulatedSite()
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    report = submit(ctx, spec_files(tmp_path, 5), site=SITE, coalesce=False)
    assert site.sbatch_calls == 5 and [r.job.slurm_job_id for r in report.jobs] == [
        "101",
        "102",
        "103",
        "104",
        "105",
    ]
    assert {r.job.array_token for r in report.jobs} == {""}


def test_a_lost_array_answer_is_settled_from_the_sites_record(tmp_path: Path) -> None:
    """The program ran (claims and answers written), the connection dropped before its answer."""
    site = SimulatedSite()
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    fake = ctx.backend(SITE).transport  # type: ignore[attr-defined]
    assert isinstance(fake, FakeTransport)
    fake.drop_after_success(["bash", "-c", slurm.submission_program()])
    report = submit(ctx, spec_files(tmp_path, 4), site=SITE, key="lost")
    assert [r.job.slurm_job_id for r in report.jobs] == [f"101_{i}" for i in range(4)]
    assert site.sbatch_calls == 1


def test_answers_never_written_are_settled_by_the_arrays_token_then_its_name(tmp_path: Path) -> None:
    """sbatch ran, the program died before writing any answer: the record holds intents only.
    In squeue the array's token gives its id; once it left, the job-completion log its name."""
    site = SimulatedSite(die_after_array_sbatch=True)
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    report = submit(ctx, spec_files(tmp_path, 3), site=SITE, key="gone")
    assert [r.job.slurm_job_id for r in report.jobs] == ["101_0", "101_1", "101_2"]  # by token
    site2 = SimulatedSite(die_after_array_sbatch=True, next_id=200)
    ctx2 = make_context(site2, FakeClock(), tmp_path / "l2.sqlite")
    fake = ctx2.backend(SITE).transport  # type: ignore[attr-defined]
    fake.fail_on_call(3)  # the settling right after the submission (read, send, settle) fails
    report = submit(ctx2, spec_files(tmp_path, 3), site=SITE, key="gone2")
    assert [r.job.state for r in report.jobs] == [JobState.SUBMITTING] * 3
    name = report.jobs[0].job.slurm_name
    # The array ran and left squeue: only the job-completion log knows it now.
    site2.queue.clear()
    site2.jobcomp = [
        f"JobId={300 + i} UserId=me(1) Name={name} JobState=COMPLETED Partition=cpu "
        f"ArrayJobId=201 ArrayTaskId={i} ExitCode=0:0"
        for i in (2, 0, 1)
    ]
    settled = refresh(ctx2, [r.job.id for r in report.jobs])
    assert [j.slurm_job_id for j in settled.jobs] == ["201_0", "201_1", "201_2"]
    assert {j.state for j in settled.jobs} == {JobState.COMPLETED}  # asked again at once


def test_rerun_with_the_key_sends_no_task_twice(tmp_path: Path) -> None:
    site = SimulatedSite(die_after_array_sbatch=True)
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    paths = spec_files(tmp_path, 4)
    submit(ctx, paths, site=SITE, key="again")
    site.die_after_array_sbatch = False
    rerun = submit(ctx, paths, site=SITE, key="again")
    assert [r.how for r in rerun.jobs] == ["sent before"] * 4
    assert site.sbatch_calls == 1 and len(site.queue) == 4


def test_another_machine_adopts_the_tasks_of_an_array(tmp_path: Path) -> None:
    site = SimulatedSite()
    first = make_context(site, FakeClock(), tmp_path / "a.sqlite")
    sent = submit(first, spec_files(tmp_path, 3), site=SITE, key="shared")
    other = make_context(site, FakeClock(), tmp_path / "b.sqlite")  # a fresh ledger: another machine
    report = submit(other, spec_files(tmp_path, 3), site=SITE, key="shared")
    assert [r.how for r in report.jobs] == ["adopted from the site's record"] * 3
    for mine, theirs in zip(sent.jobs, report.jobs, strict=True):
        fields = ("id", "slurm_job_id", "array_token", "array_task", "slurm_name", "stdout_path", "workdir")
        assert [getattr(theirs.job, f) for f in fields] == [getattr(mine.job, f) for f in fields]
    assert site.sbatch_calls == 1
    assert {j.state for j in refresh(other, [r.job.id for r in report.jobs]).jobs} == {JobState.PENDING}


def test_an_array_over_the_sites_max_goes_again_cut_to_its_size(tmp_path: Path) -> None:
    site = SimulatedSite(max_array_size=2)
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    report = submit(ctx, spec_files(tmp_path, 5), site=SITE, key="big")
    assert [r.job.slurm_job_id for r in report.jobs] == ["101_0", "101_1", "102_0", "102_1", "103"]
    assert len(site.claims) == 5  # each spec claimed once: the refused array claimed nothing
    assert all(len(ctx.ledger.attempts(r.job.id)) == 1 for r in report.jobs)


def test_the_max_array_size_a_probe_saw_cuts_arrays_at_once(tmp_path: Path) -> None:
    SnapshotStore().write(Snapshot(SITE, time.time(), 0.1, "", ProbeResult(0, (), max_array_size=3)))
    site = SimulatedSite()
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    fake = ctx.backend(SITE).transport  # type: ignore[attr-defined]
    report = submit(ctx, spec_files(tmp_path, 5), site=SITE)
    assert [r.job.slurm_job_id for r in report.jobs] == ["101_0", "101_1", "101_2", "102_0", "102_1"]
    assert len(fake.calls_to(["bash", "-c", slurm.submission_program()])) == 1


def test_cancel_one_pending_task_leaves_the_others(tmp_path: Path) -> None:
    site = SimulatedSite()
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    jobs = [r.job for r in submit(ctx, spec_files(tmp_path, 3), site=SITE).jobs]
    [result] = cancel(ctx, [jobs[1].id])
    assert result.cancelled and result.job.state is JobState.CANCELLED
    assert "Slurm keeps no record" in result.job.reason
    assert [q[0] for q in site.queue] == ["101_0", "101_2"]
    assert {j.state for j in refresh(ctx, [jobs[0].id, jobs[2].id]).jobs} == {JobState.PENDING}
