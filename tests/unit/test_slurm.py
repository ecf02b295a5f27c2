"""gateway.slurm against output recorded from real Slurm 22.05 (tests/data/slurm/README.md)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import slurm
from gateway.slurm import JobRecord, JobState, Outcome, SubmissionItem, SubmissionOutcome, probe
from gateway.slurm.submission import ustar

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def by_job_id(records: list[JobRecord]) -> dict[str, JobRecord]:
    return {record.job_id: record for record in records}


# --- states -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PENDING", JobState.PENDING),
        ("PD", JobState.PENDING),
        ("REQUEUED", JobState.PENDING),
        ("REQUEUE_HOLD", JobState.PENDING),
        ("REQUEUE_FED", JobState.PENDING),
        ("RESV_DEL_HOLD", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("R", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("CG", JobState.RUNNING),
        ("CONFIGURING", JobState.RUNNING),
        ("SUSPENDED", JobState.RUNNING),
        ("STOPPED", JobState.RUNNING),
        ("RESIZING", JobState.RUNNING),
        ("SIGNALING", JobState.RUNNING),
        ("STAGE_OUT", JobState.RUNNING),
        ("COMPLETED", JobState.COMPLETED),
        ("CD", JobState.COMPLETED),
        ("FAILED", JobState.FAILED),
        ("SPECIAL_EXIT", JobState.FAILED),
        ("CANCELLED", JobState.CANCELLED),
        ("CANCELLED by 1001", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("REVOKED", JobState.CANCELLED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("DEADLINE", JobState.TIMEOUT),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("BOOT_FAIL", JobState.NODE_FAIL),
        ("PREEMPTED", JobState.PREEMPTED),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("OOM", JobState.OUT_OF_MEMORY),
        (" completed\n", JobState.COMPLETED),
        ("RUNNING,COMPLETING", JobState.RUNNING),
        ("", JobState.UNKNOWN),
        ("?", JobState.UNKNOWN),
        ("EXPLODED", JobState.UNKNOWN),
    ],
)
def test_normalize_state(raw: str, expected: JobState) -> None:
    assert slurm.normalize_state(raw) is expected


def test_terminal_states() -> None:
    running = {JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN, JobState.SUBMITTING}
    for state in JobState:
        assert state.terminal is (state not in running)


# --- job ids and exit codes -----------------------------------------------------


@pytest.mark.parametrize("job_id", ["12", "12_3", "12_[0-9]", "1883_[2-9%2]", "7_[1-2,4-5]"])
def test_valid_job_ids(job_id: str) -> None:
    assert slurm.is_job_id(job_id)


@pytest.mark.parametrize("job_id", ["", "abc", "--user=bob", "-1", "12 13", "12;rm", "12_", "12_x"])
def test_argv_builders_refuse_what_is_not_a_job_id(job_id: str) -> None:
    assert not slurm.is_job_id(job_id)
    with pytest.raises(ValueError):
        slurm.scancel_by_name_argv([(job_id, "n")])
    with pytest.raises(ValueError):
        slurm.squeue_argv([job_id])
    with pytest.raises(ValueError):
        slurm.sacct_argv([job_id], "jobcomp")


def test_argv_builders_refuse_no_ids() -> None:
    with pytest.raises(ValueError):
        slurm.scancel_by_name_argv([])
    with pytest.raises(ValueError):
        slurm.sacct_argv([], "slurmdbd")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, (0, None)),
        (256, (1, None)),  # recorded: "Job credential revoked"
        (768, (3, None)),  # recorded: exit 3
        (15, (None, 15)),  # recorded: cancelled / timeout / preempted
        (9, (None, 9)),  # recorded: OverMemoryKill
        (4021, (None, 53)),  # recorded: output file could not be opened
    ],
)
def test_decode_wait_status(status: int, expected: tuple[int | None, int | None]) -> None:
    assert slurm.decode_wait_status(status) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:0", (0, None)),
        ("3:0", (3, None)),
        ("0:15", (None, 15)),
        ("1:0", (1, None)),
        ("", (None, None)),
    ],
)
def test_decode_exit_code_pair(text: str, expected: tuple[int | None, int | None]) -> None:
    assert slurm.decode_exit_code_pair(text) == expected


# --- squeue ---------------------------------------------------------------------


def test_squeue_argv() -> None:
    fields = "JobID,JobArrayID,ArrayJobID,ArrayTaskID,State,Partition,NodeList,SubmitTime,"
    fields += "StartTime,EndTime,exit_code,Reason,Comment,Name"
    expected_format = ",".join(f"{name}:\x1f" for name in fields.split(","))
    expected_format = expected_format[:-1] + "\x1e"
    assert slurm.squeue_format() == expected_format
    assert slurm.squeue_argv() == [
        "squeue",
        "--me",
        "--noheader",
        "--states=all",
        f"--Format={expected_format}",
    ]
    assert slurm.squeue_argv(["12", "13_2"])[-1] == "--jobs=12,13_2"


def test_parse_squeue_mixed() -> None:
    records = slurm.parse_squeue(recorded("squeue-mixed.stdout"))
    jobs = by_job_id(records)
    assert len(records) == 14

    ok = jobs["1878"]
    assert (ok.state, ok.raw_state, ok.exit_code, ok.exit_signal) == (
        JobState.COMPLETED,
        "COMPLETED",
        0,
        None,
    )
    assert (ok.name, ok.comment, ok.reason, ok.partition, ok.nodelist) == (
        "ok",
        "aif:tok-ok",
        "",
        "standard",
        "record-n2",
    )
    assert ok.array_job_id is None and ok.array_task_id is None and ok.raw_job_id == "1878"
    assert (ok.submit_time, ok.start_time, ok.end_time) == (
        "2026-11-24T02:37:39",
        "2026-11-24T02:37:40",
        "2026-11-24T02:37:40",
    )

    failed = jobs["1879"]
    assert (failed.state, failed.exit_code, failed.reason) == (
        JobState.FAILED,
        3,
        "NonZeroExitCode",
    )

    running = jobs["1880"]
    assert (running.state, running.partition, running.nodelist, running.exit_code) == (
        JobState.RUNNING,
        "gpu",
        "record-n1",
        None,
    )

    cancelled_running = jobs["1885"]
    assert cancelled_running.state is JobState.CANCELLED
    assert (cancelled_running.exit_code, cancelled_running.exit_signal) == (None, 15)
    cancelled_pending = jobs["1886"]
    assert (cancelled_pending.state, cancelled_pending.exit_code) == (JobState.CANCELLED, 0)
    assert cancelled_pending.nodelist == "" and cancelled_pending.reason == "JobHeldUser"

    assert jobs["1881"].reason == "Dependency"
    assert jobs["1882"].reason == "DependencyNeverSatisfied"
    pending = jobs["1884"]
    assert (pending.state, pending.exit_code, pending.start_time, pending.end_time) == (
        JobState.PENDING,
        None,
        None,
        None,
    )


def test_parse_squeue_arrays() -> None:
    jobs = by_job_id(slurm.parse_squeue(recorded("squeue-mixed.stdout")))
    pending_range = jobs["1883_[2-9%2]"]
    assert pending_range.is_pending_array_range
    assert (pending_range.array_job_id, pending_range.raw_job_id) == ("1883", "1883")
    assert pending_range.array_task_id == "2-9%2"
    assert pending_range.array_task_ids == (2, 3, 4, 5, 6, 7, 8, 9)
    assert pending_range.reason == "JobArrayTaskLimit"
    task = jobs["1883_0"]
    assert (task.array_job_id, task.array_task_id, task.raw_job_id, task.state) == (
        "1883",
        "0",
        "1890",
        JobState.RUNNING,
    )
    assert not task.is_pending_array_range and task.array_task_ids == (0,)

    # The last pending task is shown as a task, carried by the array's own record.
    last = by_job_id(slurm.parse_squeue(recorded("squeue-array-last-pending.stdout")))
    assert set(last) == {"1894_0", "1894_1", "1894_2"}
    assert (last["1894_2"].state, last["1894_2"].raw_job_id) == (JobState.PENDING, "1894")
    assert not last["1894_2"].is_pending_array_range


def test_parse_squeue_free_text_cannot_shift_fields() -> None:
    jobs = by_job_id(slurm.parse_squeue(recorded("squeue-mixed.stdout")))
    weird = jobs["1887"]
    assert weird.name == "weird|name\x1fwith\nnewline\ttab"
    assert weird.comment == "c|o\nmment"
    assert (weird.state, weird.reason) == (JobState.PENDING, "JobHeldUser")


def test_parse_squeue_separator_in_comment_only_spoils_that_records_name() -> None:
    line = "\x1f".join(
        ["5", "5", "5", "N/A", "RUNNING", "p", "n1", "t", "t", "t", "0", "None", "a\x1fb", "nm"]
    )
    (record,) = slurm.parse_squeue(line + "\x1e\n")
    assert (record.job_id, record.state, record.comment, record.name) == (
        "5",
        JobState.RUNNING,
        "a",
        "b\x1fnm",
    )


def test_parse_squeue_other_states() -> None:
    timeout = slurm.parse_squeue(recorded("squeue-timeout.stdout"))[0]
    assert (timeout.state, timeout.reason, timeout.exit_code, timeout.exit_signal) == (
        JobState.TIMEOUT,
        "TimeLimit",
        None,
        15,
    )

    jobs = by_job_id(slurm.parse_squeue(recorded("squeue-suspended-completing.stdout")))
    assert (jobs["20"].raw_state, jobs["20"].state) == ("SUSPENDED", JobState.RUNNING)
    assert (jobs["22"].raw_state, jobs["22"].state) == ("COMPLETING", JobState.RUNNING)

    jobs = by_job_id(slurm.parse_squeue(recorded("squeue-node-fail.stdout")))
    assert (jobs["23"].state, jobs["23"].reason, jobs["23"].exit_signal) == (
        JobState.NODE_FAIL,
        "NodeDown",
        15,
    )
    assert (jobs["22"].state, jobs["22"].exit_code) == (JobState.FAILED, 1)
    # Requeued by the node failure: back to pending, no exit status yet.
    assert (jobs["21"].state, jobs["21"].reason, jobs["21"].exit_code) == (
        JobState.PENDING,
        "BeginTime",
        None,
    )
    assert jobs["20"].reason == "JobHeldAdmin"

    jobs = by_job_id(slurm.parse_squeue(recorded("squeue-preempt-oom.stdout")))
    assert (jobs["3"].state, jobs["3"].exit_signal, jobs["3"].partition) == (
        JobState.PREEMPTED,
        15,
        "low",
    )
    # OverMemoryKill: Slurm says FAILED, not OUT_OF_MEMORY.
    assert (jobs["5"].state, jobs["5"].reason, jobs["5"].exit_signal) == (
        JobState.FAILED,
        "JobLaunchFailure",
        9,
    )


def test_parse_squeue_empty_and_foreign_output() -> None:
    assert slurm.parse_squeue("") == []
    with pytest.raises(slurm.SlurmOutputError):
        slurm.parse_squeue("12|ok|RUNNING\n")
    with pytest.raises(slurm.SlurmOutputError):
        slurm.parse_squeue("not\x1fenough\x1e\n")
    with pytest.raises(slurm.SlurmOutputError):
        slurm.parse_squeue("x" + "\x1f" * 13 + "\x1e\n")


def test_squeue_unknown_id_is_recognised() -> None:
    stderr = recorded("squeue-unknown-id.stderr")
    assert slurm.squeue_found_no_jobs(1, stderr)
    assert not slurm.squeue_found_no_jobs(1, recorded("ctld-down-squeue.stderr"))
    assert not slurm.squeue_found_no_jobs(0, "")


def test_select_jobs() -> None:
    records = slurm.parse_squeue(recorded("squeue-mixed.stdout"))

    def ids(*wanted: str) -> list[str]:
        return [record.job_id for record in slurm.select_jobs(records, wanted)]

    assert sorted(ids("1883")) == ["1883_0", "1883_1", "1883_[2-9%2]"]
    assert ids("1883_7") == ["1883_[2-9%2]"]  # not started yet: the range stands for it
    assert ids("1883_0") == ["1883_0"]
    assert ids("1890") == ["1883_0"]  # raw id, as sacct -c knows array tasks
    assert ids("1878", "99999") == ["1878"]
    assert ids("99999") == []


def test_squeue_by_id_answers_like_select_jobs() -> None:
    wanted = ["1878", "1883", "1883_7", "1885", "99999"]
    by_id = slurm.parse_squeue(recorded("squeue-mixed-by-id.stdout"))
    selected = slurm.select_jobs(slurm.parse_squeue(recorded("squeue-mixed.stdout")), wanted)
    assert sorted(r.job_id for r in by_id) == sorted(r.job_id for r in selected)


# --- sacct ----------------------------------------------------------------------


def test_sacct_argv() -> None:
    fields = "JobID,JobIDRaw,State,ExitCode,Partition,NodeList,Submit,Start,End,Reason,Comment,JobName"
    common = ["--noheader", "--parsable2", "--delimiter=\x1f", f"--format={fields}", "--jobs=3,4_1"]
    assert slurm.sacct_argv(["3", "4_1"], "jobcomp") == ["sacct", "--completion", *common]
    assert slurm.sacct_argv(["3", "4_1"], "slurmdbd") == ["sacct", "--allocations", *common]
    with pytest.raises(ValueError):
        slurm.sacct_argv(["3"], "mysql")  # type: ignore[arg-type]


def test_parse_sacct_jobcomp() -> None:
    assert "Unknown type ArrayJobId" in recorded("sacct-jobcomp.stderr")  # noise only
    records = slurm.parse_sacct(recorded("sacct-jobcomp.stdout"))
    jobs = {record.raw_job_id: record for record in records}
    # One record per job although the file has several per requeued job.
    assert len(records) == len(jobs) == 19

    assert (jobs["3"].state, jobs["3"].exit_code, jobs["3"].name) == (JobState.COMPLETED, 0, "ok")
    assert (jobs["4"].state, jobs["4"].exit_code) == (JobState.FAILED, 3)
    assert (jobs["9"].state, jobs["9"].nodelist) == (JobState.CANCELLED, "")
    # Requeued twice: PENDING, FAILED, PENDING, then CANCELLED: the last counts.
    assert (jobs["13"].state, jobs["13"].exit_code, jobs["13"].exit_signal) == (
        JobState.CANCELLED,
        None,
        15,
    )
    # NODE_FAIL (requeued), then CANCELLED.
    assert jobs["16"].state is JobState.CANCELLED
    assert jobs["16"].array_job_id is None  # sacct -c does not know it was task 7_0
    assert (jobs["22"].state, jobs["22"].exit_code) == (JobState.FAILED, 1)
    assert jobs["23"].state is JobState.NODE_FAIL
    # jobcomp loses the signal of a timed-out job: 0:0 (squeue said 15).
    assert (jobs["26"].state, jobs["26"].exit_code) == (JobState.TIMEOUT, 0)
    assert (jobs["45"].state, jobs["45"].exit_signal) == (JobState.FAILED, 1)
    # A space in the job name empties the State column of sacct -c.
    assert (jobs["47"].state, jobs["47"].raw_state, jobs["47"].name) == (
        JobState.UNKNOWN,
        "",
        "two",
    )
    assert jobs["43"].state is JobState.UNKNOWN
    assert (jobs["1894"].state, jobs["1895"].state) == (JobState.COMPLETED, JobState.COMPLETED)
    assert all(record.comment == "" and record.reason == "" for record in records)
    assert jobs["4"].start_time == "2026-11-24T02:27:11"
    assert "99999" not in jobs


def test_parse_sacct_preempt_and_memory_kill() -> None:
    jobs = {r.job_id: r for r in slurm.parse_sacct(recorded("sacct-jobcomp-preempt-oom.stdout"))}
    assert (jobs["3"].state, jobs["3"].partition) == (JobState.PREEMPTED, "low")
    assert (jobs["5"].state, jobs["5"].exit_code, jobs["5"].exit_signal) == (
        JobState.FAILED,
        None,
        9,
    )


def test_parse_sacct_slurmdbd_style_arrays_and_multiline_names() -> None:
    def line(*fields: str) -> str:
        return "\x1f".join(fields)

    stdout = "\n".join(
        [
            line("7_3", "10", "COMPLETED", "0:0", "p", "n1", "s", "s", "e", "None", "aif:t", "two"),
            "lines",
            line(
                "7_[4-9]",
                "7",
                "PENDING",
                "0:0",
                "p",
                "None assigned",
                "s",
                "Unknown",
                "Unknown",
                "JobArrayTaskLimit",
                "aif:t",
                "arr",
            ),
            line("8", "8", "CANCELLED by 1001", "0:0", "p", "n1", "s", "s", "e", "None", "", "x|y"),
            "",
        ]
    )
    jobs = by_job_id(slurm.parse_sacct(stdout))
    assert (jobs["7_3"].array_job_id, jobs["7_3"].array_task_id, jobs["7_3"].name) == (
        "7",
        "3",
        "two\nlines",
    )
    assert jobs["7_3"].comment == "aif:t"
    pending = jobs["7_[4-9]"]
    assert (pending.state, pending.array_task_ids, pending.nodelist, pending.start_time) == (
        JobState.PENDING,
        (4, 5, 6, 7, 8, 9),
        "",
        None,
    )
    assert (jobs["8"].state, jobs["8"].name, jobs["8"].reason) == (JobState.CANCELLED, "x|y", "")


def test_parse_sacct_skips_records_broken_by_the_jobcomp_file() -> None:
    # A newline in a name splits the jobcomp line; sacct then invents job 0.
    stdout = "\x1f".join(["0", "0", "", "", "", "", "", "", "", "", "", ""]) + "\n"
    assert slurm.parse_sacct(stdout) == []
    assert slurm.parse_sacct("") == []


# --- scancel --------------------------------------------------------------------


def test_scancel_has_no_user_filter() -> None:
    # scancel --me 39_3 cancelled every pending task of array 39 (recorded).
    assert "--me" not in slurm.scancel_by_name_argv([("12", "a")])[2]


def test_parse_scancel_errors() -> None:
    assert slurm.parse_scancel_errors(recorded("scancel-not-owner.stderr")) == {
        "1884": "Access/permission denied"
    }
    down = recorded("ctld-down-scancel.stderr")
    assert slurm.parse_scancel_errors(down) == {
        "1884": "Unable to contact slurm controller (connect failure)"
    }
    assert slurm.parse_scancel_errors("") == {}


def test_controller_unreachable() -> None:
    for name in ("ctld-down-squeue.stderr", "ctld-down-sinfo.stderr", "ctld-down-scancel.stderr"):
        assert slurm.is_controller_unreachable(recorded(name))
    assert slurm.is_controller_unreachable(recorded("ctld-down-submission.stdout"))
    assert not slurm.is_controller_unreachable(recorded("sbatch-bad-partition.stderr"))


# --- sinfo and queue depth --------------------------------------------------------


def test_sinfo_argv() -> None:
    assert slurm.sinfo_argv() == [
        "sinfo",
        "--noheader",
        "--Format=Partition:|,Available:|,StateLong:|,Nodes:|,CPUsState:|,Gres:|,GresUsed:|,Memory:|,Time:|",
    ]


def test_parse_sinfo_phase1() -> None:
    loads = {load.partition: load for load in slurm.parse_sinfo(recorded("sinfo.stdout"))}
    assert list(loads) == ["standard", "gpu", "closed"]
    standard = loads["standard"]
    assert standard.default and standard.up
    assert (standard.nodes_total, dict(standard.nodes_by_state)) == (2, {"mixed": 2})
    assert (standard.cpus_alloc, standard.cpus_idle, standard.cpus_other, standard.cpus_total) == (
        3,
        77,
        0,
        80,
    )
    assert (standard.gpus_total, standard.gpus_used, standard.gres) == (4, 1, ("gpu:4",))
    assert (standard.memory_mb, standard.timelimit, standard.timelimit_seconds) == (
        256000,
        "2-00:00:00",
        2 * 86400,
    )
    closed = loads["closed"]
    assert (closed.available, closed.up, closed.default, closed.gpus_total, closed.gres) == (
        "down",
        False,
        False,
        0,
        (),
    )
    assert closed.timelimit_seconds == 3600
    assert len({*loads.values()}) == 3  # hashable although it holds a mapping


def test_parse_sinfo_grouped_nodes_count_gres_used_per_node() -> None:
    loads = {load.partition: load for load in slurm.parse_sinfo(recorded("sinfo-grouped.stdout"))}
    gpu = loads["gpu"]
    assert (gpu.nodes_total, gpu.cpus_total, gpu.gpus_total, gpu.gpus_used) == (2, 128, 8, 2)
    assert loads["low"].timelimit_seconds is None  # infinite
    assert loads["high"].timelimit_seconds == 30 * 60


def test_parse_sinfo_drain() -> None:
    loads = {load.partition: load for load in slurm.parse_sinfo(recorded("sinfo-drain.stdout"))}
    standard = loads["standard"]
    assert dict(standard.nodes_by_state) == {"draining": 1, "mixed": 1}
    assert (standard.cpus_alloc, standard.cpus_idle, standard.cpus_other) == (3, 62, 63)
    assert (standard.gpus_total, standard.gpus_used) == (8, 3)
    # The draining node's 3 GPUs no job holds are not free: only the mixed node's 2 are.
    assert (standard.gpus_unusable, standard.gpus_free, standard.usable_nodes) == (3, 2, 1)
    assert loads["low"].gpus_free == 2 and loads["low"].usable_nodes == 1


def test_node_states_that_may_start_a_job() -> None:
    usable = ("idle", "mixed", "allocated", "completing", "maint", "idle~", "mixed$")
    unusable = ("drained", "draining", "down*", "idle*", "down", "fail", "failing", "unknown", "future")
    assert all(slurm.node_state_usable(s) for s in usable)
    assert not any(slurm.node_state_usable(s) for s in unusable)


def test_parse_sinfo_rejects_foreign_output() -> None:
    with pytest.raises(slurm.SlurmOutputError):
        slurm.parse_sinfo("PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST\n")
    assert slurm.parse_sinfo("") == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:00", 1800),
        ("1:00:00", 3600),
        ("2-00:00:00", 172800),
        ("1-12", 129600),
        ("1-00:30", 88200),
        ("infinite", None),
        ("UNLIMITED", None),
        ("n/a", None),
    ],
)
def test_parse_slurm_duration(text: str, seconds: int | None) -> None:
    assert slurm.parse_slurm_duration(text) == seconds


@pytest.mark.parametrize(
    ("gres", "count"),
    [
        ("gpu:4", 4),
        ("(null)", 0),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:2(IDX:0,2),gpu:v100:1(IDX:3)", 3),
        ("gpu:a100:2,shard:8", 2),
        ("gpu", 1),
    ],
)
def test_gres_count(gres: str, count: int) -> None:
    assert slurm.gres_count(gres) == count


def test_queue_depth() -> None:
    assert slurm.queue_depth_argv() == [
        "squeue",
        "--noheader",
        "--states=PENDING",
        "--Format=Partition:|,NumCPUs:|,ArrayTaskID:|",
    ]
    depth = {d.partition: d for d in slurm.parse_queue_depth(recorded("queue-depth.stdout"))}
    # 8 tasks of 1883_[2-9%2], 1000 of --array=0-999 (2 CPUs each), 6 single jobs,
    # and the job pending for "standard,gpu" (4 CPUs), which counts in both.
    assert (depth["standard"].pending_jobs, depth["standard"].pending_cpus) == (1015, 2018)
    assert (depth["gpu"].pending_jobs, depth["gpu"].pending_cpus) == (1, 4)
    assert slurm.parse_queue_depth("") == []


def test_array_task_lists() -> None:
    assert slurm.expand_array_tasks("1-2,4-5%1") == [1, 2, 4, 5]
    assert slurm.expand_array_tasks("0-15:4") == [0, 4, 8, 12]
    assert slurm.count_array_tasks("0-999") == 1000
    assert slurm.count_array_tasks("0-15:4,20") == 5
    assert slurm.count_array_tasks("0-4294967290") == 4294967291  # counted, not listed
    huge = JobRecord(
        "9_[0-4000000000]",
        "9",
        "n",
        JobState.PENDING,
        "PENDING",
        "",
        "",
        None,
        "p",
        "",
        array_task_id="0-4000000000",
    )
    assert huge.stands_for_task(3999999999) and not huge.stands_for_task(4000000001)
    with pytest.raises(slurm.SlurmOutputError):
        slurm.expand_array_tasks("5-1")
    with pytest.raises(slurm.SlurmOutputError):
        slurm.count_array_tasks("a-b")


# --- batched submission ---------------------------------------------------------


SCRIPT = "#!/bin/bash\n#SBATCH --job-name=t\ntrue\n"


def test_bundle_is_deterministic_and_carries_values_as_data() -> None:
    items = [
        SubmissionItem(SCRIPT, "/scratch/a b;touch x"),
        SubmissionItem(SCRIPT + "# é", "", ("--dependency=afterok:12", "--comment=$(x)")),
        SubmissionItem(SCRIPT, "/w", (), "f" * 16 + "-0.0", "aif-tok-1", "aif-1"),
    ]
    bundle = slurm.build_submission_bundle(items, "/record")
    assert bundle == slurm.build_submission_bundle(items, "/record")
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        # Three files whatever the number of jobs: creating files is what a slow /tmp charges for.
        assert list(members) == ["journal", "items", "scripts"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" and m.isfile() for m in members.values())

        def content(name: str) -> bytes:
            extracted = tar.extractfile(members[name])
            assert extracted is not None
            return extracted.read()

        assert content("journal") == b"/record\0"
        assert content("items").split(b"\0") == [
            *(b"S", b"/scratch/a b;touch x", b"0", b"", b"", b""),
            *(b"S", b"", b"2", b"--dependency=afterok:12", b"--comment=$(x)", b"", b"", b""),
            *(b"S", b"/w", b"0", b"f" * 16 + b"-0.0", b"aif-tok-1", b"aif-1"),
            b"",
        ]
        # Each script without its last newline (the program's here-string adds it back).
        assert content("scripts").split(b"\0") == [
            SCRIPT[:-1].encode(),
            (SCRIPT + "# é").encode(),
            SCRIPT[:-1].encode(),
            b"",
        ]
    # No value ever becomes program text.
    assert "touch" not in slurm.submission_program()


@pytest.mark.parametrize(
    "item",
    [
        SubmissionItem("", ""),
        SubmissionItem("  \n", ""),
        SubmissionItem("a\0b", ""),
        SubmissionItem(SCRIPT, "relative/dir"),
        SubmissionItem(SCRIPT, "/a\0b"),
        SubmissionItem(SCRIPT, "", ("other-script.sh",)),
        SubmissionItem(SCRIPT, "", ("--comment=a\0b",)),
    ],
)
def test_bundle_refuses_bad_items(item: SubmissionItem) -> None:
    with pytest.raises(ValueError):
        slurm.build_submission_bundle([SubmissionItem(SCRIPT, ""), item])


def test_submission_argv() -> None:
    argv = slurm.submission_argv()
    assert argv[:2] == ["bash", "-c"] and argv[2] == slurm.submission_program()
    # Far below the 128 KiB argv limit (MAX_ARG_STRLEN); arrays took it past 4 KiB.
    assert len(slurm.submission_program()) < 8192


def test_parse_recorded_submission_output() -> None:
    outcomes = slurm.parse_submission_output(recorded("submission-batch.stdout"), 8)
    assert [o.index for o in outcomes] == list(range(8))
    assert [o.job_id for o in outcomes if o.ok] == ["1866", "1867", "1868", "1869", "1871"]
    bad_partition = outcomes[3]
    assert (bad_partition.ok, bad_partition.unknown, bad_partition.returncode) == (False, False, 1)
    assert bad_partition.error == (
        "sbatch: error: invalid partition specified: nosuch / "
        "sbatch: error: Batch job submission failed: Invalid partition name specified"
    )
    assert outcomes[4].error.startswith("mkdir: cannot create directory")
    assert "Requested node configuration is not available" in outcomes[6].error
    assert not any(o.unknown for o in outcomes)


def test_parse_submission_output_controller_down_is_a_failure() -> None:
    outcomes = slurm.parse_submission_output(recorded("ctld-down-submission.stdout"), 2)
    assert all(not o.ok and not o.unknown for o in outcomes)
    assert all(slurm.is_controller_unreachable(o.error) for o in outcomes)


def test_missing_lines_are_unknown_not_failed() -> None:
    first_two = "".join(recorded("submission-batch.stdout").splitlines(keepends=True)[:2])
    outcomes = slurm.parse_submission_output(first_two, 4)
    assert [o.ok for o in outcomes] == [True, True, False, False]
    assert [o.unknown for o in outcomes] == [False, False, True, True]
    assert outcomes[2].job_id is None and "may have been submitted" in outcomes[2].error
    assert all(o.unknown for o in slurm.parse_submission_output("", 3))


def test_parse_submission_output_edge_cases() -> None:
    stdout = "\n".join(
        [
            "Welcome to the cluster!",  # a chatty login script
            "0\t0\t12;north",
            "0\t0\t99",  # repeated index: the first line counts
            "1\t0\t",  # rc 0 but no id: cannot tell
            "2\t1\tsbatch: error: Batch job submission failed: Socket timed out on send/recv",
            "3\t141\t",  # killed mid-call
            "9\t0\t77",  # not one of ours
            "",
        ]
    )
    o = slurm.parse_submission_output(stdout, 4)
    assert (o[0].ok, o[0].job_id, o[0].cluster) == (True, "12", "north")
    assert (o[1].ok, o[1].unknown) == (False, True)
    assert (o[2].ok, o[2].unknown, o[2].returncode) == (False, True, 1)
    assert (o[3].ok, o[3].unknown, o[3].returncode) == (False, True, 141)
    assert len(o) == 4


def test_submission_outcome_invariant() -> None:
    with pytest.raises(ValueError):
        SubmissionOutcome(index=0, kind=Outcome.ACCEPTED, job_id=None, error="")
    with pytest.raises(ValueError):
        SubmissionOutcome(index=0, kind=Outcome.UNKNOWN, job_id="1", error="")
    assert SubmissionOutcome(index=0, kind=Outcome.ACCEPTED, job_id="1", error="").ok


@pytest.mark.parametrize(
    ("rc", "message", "kind"),
    [
        (0, "12", Outcome.ACCEPTED),
        (1, "sbatch: error: Batch job submission failed: Invalid partition name specified", Outcome.REFUSED),
        (
            1,
            "sbatch: error: Batch job submission failed: "
            "Unable to contact slurm controller (connect failure)",
            Outcome.SITE_DOWN,
        ),
        (
            1,
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
            Outcome.UNKNOWN,
        ),
        (129, "exited with status 129", Outcome.UNKNOWN),
        (0, "garbage", Outcome.UNKNOWN),
        (-2, "intent\taif-tok-1\taif-x", Outcome.CLAIMED),
        (-3, "cannot write the site record", Outcome.SITE_DOWN),
    ],
)
def test_every_sbatch_answer_is_classified(rc: int, message: str, kind: Outcome) -> None:
    """A controller that is down is "site down" (nothing queued, retryable), never a rejection."""
    assert slurm.classify_sbatch(0, rc, message).kind is kind


def test_controller_down_recording_is_site_down() -> None:
    outcomes = slurm.parse_submission_output(recorded("ctld-down-submission.stdout"), 2)
    assert [o.kind for o in outcomes] == [Outcome.SITE_DOWN, Outcome.SITE_DOWN]


FAKE_SBATCH = r"""#!/bin/bash
# Stand-in for sbatch: logs its argv (NUL-separated), its cwd and its script (stdin).
log=$AIF_FAKE_LOG
printf '%s\0' "$@" >>"$log/argv"
printf '\n' >>"$log/argv"
pwd >>"$log/cwd"
cat >>"$log/scripts"
for arg in "$@"; do
    if [ "$arg" = "--partition=nosuch" ]; then
        echo "sbatch: error: invalid partition specified: nosuch" >&2
        echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
        exit 1
    fi
done
count=$(($(wc -l <"$log/argv") + 100))
echo "$count"
"""


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
def test_submission_program_runs_with_a_fake_sbatch(tmp_path: Path) -> None:
    """The real program, run by bash with a stand-in sbatch: values stay data."""
    bin_dir, log, tmp, cwd = (tmp_path / name for name in ("bin", "log", "tmp", "cwd"))
    for directory in (bin_dir, log, tmp, cwd):
        directory.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    pwned = tmp_path / "PWNED"
    hostile_dir = f"{tmp_path}/x y;touch {pwned}"
    items = [
        SubmissionItem(SCRIPT + "# zero\n", f"{tmp_path}/work/a"),
        SubmissionItem(SCRIPT + "# one\n", hostile_dir, ("--comment=$(touch " + str(pwned) + ")",)),
        SubmissionItem(SCRIPT, "", ("--partition=nosuch",)),
        SubmissionItem(SCRIPT, "/proc/aif-no-such/dir"),
        SubmissionItem(SCRIPT, "", ("--job-name=`touch " + str(pwned) + "`", "--dependency=afterok:1")),
    ] + [SubmissionItem(SCRIPT + f"# item {i}\n", "") for i in range(5, 12)]
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp), AIF_FAKE_LOG=str(log))
    result = subprocess.run(
        slurm.submission_argv(),
        input=slurm.build_submission_bundle(items),
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(items)
    assert [line.split("\t")[0] for line in lines] == [str(i) for i in range(len(items))]
    outcomes = slurm.parse_submission_output(result.stdout.decode(), len(items))
    assert [o.ok for o in outcomes] == [True, True, False, False] + [True] * 8
    assert outcomes[2].error.endswith("Invalid partition name specified")
    assert outcomes[3].error.startswith("mkdir: ")
    # Items past 000007 were found (no octal trap) and sbatch ran 11 times: all
    # items but the one whose mkdir failed.
    assert outcomes[11].job_id == "111"

    assert not pwned.exists()
    assert Path(hostile_dir).is_dir() and (tmp_path / "work" / "a").is_dir()
    argv_lines = (log / "argv").read_bytes().split(b"\n")[:-1]
    item1 = argv_lines[1].split(b"\0")[:-1]
    assert item1[:2] == [b"--parsable", ("--comment=$(touch " + str(pwned) + ")").encode()]
    item4 = argv_lines[3].split(b"\0")[:-1]
    assert item4[1:3] == [
        ("--job-name=`touch " + str(pwned) + "`").encode(),
        b"--dependency=afterok:1",
    ]
    # sbatch ran in the caller's directory (the job's submit dir), never the temp dir...
    assert set((log / "cwd").read_text().split()) == {str(cwd)}
    # ...read each script on its stdin, and the temp dir is gone afterwards.
    assert "# zero\n" in (log / "scripts").read_text()
    assert list(tmp.iterdir()) == []


# A stand-in sbatch for several at a time: the job id comes from the script ("# item N"),
# and it notes how many stand-ins were running at once (each stays 0.2 s).
CONCURRENT_SBATCH = r"""#!/bin/bash
log=$AIF_FAKE_LOG
item=$(sed -n 's/^# item //p')  # the script, on stdin
: >"$log/running.$$"
ls "$log" | grep -c '^running\.' >>"$log/together"
sleep 0.2
rm -f "$log/running.$$"
if [ "$item" = "$AIF_FAKE_KILL_AT" ]; then
    kill -TERM "$PPID"  # the worker that ran us: as if the connection dropped
fi
echo "$((1000 + item))"
"""


def run_with_workers(
    tmp_path: Path, count: int, workers: int, kill_at: int | None = None
) -> tuple[subprocess.CompletedProcess[bytes], Path, Path]:
    bin_dir, log, tmp, journal = (tmp_path / name for name in ("bin", "log", "tmp", "record"))
    for directory in (bin_dir, log, tmp, journal):
        directory.mkdir()
    (bin_dir / "sbatch").write_text(CONCURRENT_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    items = [
        SubmissionItem(
            SCRIPT + f"# item {i}\n", f"{tmp_path}/work/{i}", (), f"{i:016x}-0.0", f"tok-{i}", f"aif-{i}"
        )
        for i in range(count)
    ]
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        TMPDIR=str(tmp),
        AIF_FAKE_LOG=str(log),
        AIF_FAKE_KILL_AT="" if kill_at is None else str(kill_at),
    )
    result = subprocess.run(
        slurm.submission_argv(workers),
        input=slurm.build_submission_bundle(items, str(journal)),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return result, log, journal


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_share_the_items_each_claimed_sent_and_answered_once(tmp_path: Path, workers: int) -> None:
    result, log, journal = run_with_workers(tmp_path, 7, workers)
    assert result.returncode == 0, result.stderr
    outcomes = slurm.parse_submission_output(result.stdout.decode(), 7)
    assert [o.job_id for o in outcomes] == [str(1000 + i) for i in range(7)]
    assert len(result.stdout.decode().splitlines()) == 7  # one line per item, none twice
    for i in range(7):
        assert (journal / f"{i:016x}-0.0").read_text() == f"intent\ttok-{i}\taif-{i}\nanswer\t0\t{1000 + i}\n"
        assert (tmp_path / "work" / str(i)).is_dir()
    # Never more sbatch at once than workers; with several, they did overlap.
    together = [int(n) for n in (log / "together").read_text().split()]
    assert len(together) == 7 and max(together) <= workers
    assert max(together) == workers
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
def test_a_signal_to_one_worker_stops_every_worker_after_its_running_sbatch(tmp_path: Path) -> None:
    """Worker 1 (items 1, 3, 5, 7) is told to stop while item 3's sbatch runs: item 3's answer
    still reaches the record, no worker starts another item, the program exits 143."""
    result, _log, journal = run_with_workers(tmp_path, 8, 2, kill_at=3)
    assert result.returncode == 143, result.stderr
    outcomes = slurm.parse_submission_output(result.stdout.decode(), 8)
    assert outcomes[1].job_id == "1001" and outcomes[3].job_id == "1003"
    claimed = sorted(int(path.name.split("-")[0], 16) for path in journal.iterdir())
    assert 5 not in claimed and 7 not in claimed
    for i in claimed:  # every intent has its answer: nothing was left in doubt
        assert (journal / f"{i:016x}-0.0").read_text().endswith(f"answer\t0\t{1000 + i}\n")
        assert outcomes[i].job_id == str(1000 + i)
    assert all(outcomes[i].unknown for i in range(8) if i not in claimed)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_submission_argv_takes_one_to_eight_workers() -> None:
    assert slurm.submission_argv()[3:] == ["aif-submit", "1"]
    assert slurm.submission_argv(8)[4] == "8"
    array = slurm.ArraySubmission(SCRIPT, "/w/a", "aif-tok-" + "0" * 32, (slurm.ArrayMember("", "", ""),))
    assert slurm.submission_argv(2, [SubmissionItem(SCRIPT, ""), array])[3:] == ["aif-submit", "2", "arrays"]
    assert slurm.submission_argv(2, [SubmissionItem(SCRIPT, "")])[3:] == ["aif-submit", "2"]
    for bad in (0, 9):
        with pytest.raises(ValueError):
            slurm.submission_argv(bad)


def hand_made_bundle(items: bytes, scripts: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("items", items), ("scripts", scripts)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
@pytest.mark.parametrize(
    "items",
    [
        b"S\0\0a[$(touch PWNED)]\0\0\0\0",  # a count bash would evaluate, and so run
        b"A\0/w\00\0aif-tok-x\01+1\0",
        b"X\0\00\0\0\0\0",
    ],
)
def test_a_malformed_bundle_is_refused_before_anything_runs(tmp_path: Path, items: bytes) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\ntouch {tmp_path}/SENT\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
    result = subprocess.run(
        slurm.submission_argv(),
        input=hand_made_bundle(items, b"#!/bin/bash\0"),
        capture_output=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == slurm.SUBMISSION_SETUP_FAILED, result.stderr
    assert b"malformed" in result.stderr and result.stdout == b""
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "SENT").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]  # the temp dir is gone too


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_submission_program_setup_failure(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run(
        slurm.submission_argv(), input=b"not a tar", capture_output=True, env=env, check=False
    )
    assert result.returncode == slurm.SUBMISSION_SETUP_FAILED
    assert result.stdout == b""
    assert b"cannot unpack" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- finding a job by its token -----------------------------------------------------


def test_find_by_comment() -> None:
    assert slurm.find_by_comment_argv() == slurm.squeue_argv()
    stdout = recorded("squeue-mixed.stdout")
    assert slurm.parse_find_by_comment(stdout, "tok-ok") == "1878"
    assert slurm.parse_find_by_comment(stdout, "tok-canr") == "1885"  # ended jobs count too
    assert slurm.parse_find_by_comment(stdout, "tok-arr") == "1883"  # the array, as --parsable
    assert slurm.parse_find_by_comment(stdout, "tok-nothing") is None
    assert slurm.find_all_by_comment(stdout, "tok-dup") == ["1888", "1889"]
    assert slurm.parse_find_by_comment(stdout, "tok-dup") == "1888"
    assert slurm.submission_comment("tok-1") == "aif:tok-1"
    for bad in ("", "a b", "a,b", "-x", "x" * 200):
        with pytest.raises(ValueError):
            slurm.submission_comment(bad)


def test_recorded_sbatch_answers() -> None:
    assert recorded("sbatch-parsable-ok.stdout") == "1897\n"
    assert recorded("sbatch-parsable-array.stdout") == "1899\n"  # the array's base id
    assert slurm.parse_submission_output("0\t0\t" + recorded("sbatch-parsable-ok.stdout"), 1)[0].ok
    assert "Batch script is empty" in recorded("sbatch-empty-script.stderr")


def test_sacct_by_name_reads_the_jobcomp_file_from_a_date() -> None:
    argv = slurm.sacct_by_name_argv(["a.aif-x", "b.aif-y"], "jobcomp", "2026-11-29")
    assert argv[:2] == ["sacct", "--completion"]
    assert "--name=a.aif-x,b.aif-y" in argv and "--starttime=2026-11-29" in argv
    assert slurm.sacct_by_name_argv(["a"], "slurmdbd", "2026-11-29")[1] == "--allocations"
    with pytest.raises(ValueError):
        slurm.sacct_by_name_argv(["a,b"], "jobcomp", "2026-11-29")
    with pytest.raises(ValueError):
        slurm.sacct_by_name_argv(["a"], "jobcomp", "yesterday")


def test_scancel_by_name_checks_each_jobs_name_at_the_controller(tmp_path: Path) -> None:
    """Each id is cancelled with its own --name filter; a '' name (older aif) by id alone."""
    argv = slurm.scancel_by_name_argv([("12", "a.aif-x"), ("13", "")])
    assert argv[:2] == ["bash", "-c"] and argv[4:] == ["a.aif-x", "12", "", "13"]
    log = tmp_path / "calls"
    fake = tmp_path / "scancel"
    fake.write_text(f'#!/bin/bash\nprintf "%s|" "$@" >>{log}\necho >>{log}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    subprocess.run(argv, env=env, check=True)
    assert log.read_text().splitlines() == ["--name=a.aif-x|--|12|", "--|13|"]
    with pytest.raises(ValueError):
        slurm.scancel_by_name_argv([("12", "a,b")])


SENT_WITHOUT_COMMENTS = {"submit.sh"}
SHIPPED_PROGRAMS = {
    "scancel_by_name.sh": lambda: slurm.scancel_by_name_argv([("12", "a")]),
    "submit.sh": slurm.submission_argv,
    "probe.sh": lambda: probe.probe_argv(["gpu"], True),
}


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
@pytest.mark.parametrize("name", sorted(SHIPPED_PROGRAMS))
def test_shipped_bash_programs_are_what_runs_and_parse(name: str) -> None:
    """The bash programs aif runs at a site are files in the package (submit.sh is sent
    without its comment lines); bash -n accepts the file and what is sent."""
    path = Path(slurm.__file__).resolve().parent / name
    text = path.read_text(encoding="utf-8")
    sent = SHIPPED_PROGRAMS[name]()[2]
    if name in SENT_WITHOUT_COMMENTS:
        lines = text.splitlines(keepends=True)
        assert sent == "".join(line for line in lines if not line.lstrip().startswith("#"))
        assert len(sent) < len(text)
    else:
        assert sent == text
    for check in (["bash", "-n", str(path)], ["bash", "-n", "-c", sent]):
        result = subprocess.run(check, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["journal", "items", "scripts"]), st.binary(max_size=3000)),
        max_size=3,
    )
)
def test_the_bundles_tar_is_what_tarfile_writes(files: list[tuple[str, bytes]]) -> None:
    """Our three-file ustar writer, byte for byte against the standard library's."""
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.mtime = info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o600
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert ustar(files) == expected.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ustar(files))) as back:
        assert [(m.name, back.extractfile(m).read()) for m in back.getmembers()] == files  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        ustar([("a/b", b"")])
