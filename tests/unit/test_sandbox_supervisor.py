"""The supervisor's stop/start requests, on a throwaway daemon (/bin/sleep); no root needed.

The real daemons are stopped and started the same way in
tests/integration/test_sandbox_faults.py. Cost: well under a second.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sandbox.configs import SandboxLayout
from gateway.sandbox.supervisor import CONTROL_SOCKET, DaemonSpec, Supervisor

SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    (tmp_path / "run").mkdir()
    (tmp_path / "log").mkdir()
    sup = Supervisor(tmp_path)
    sup.plan = [DaemonSpec("napper", (SLEEP, "60"), {}, tmp_path / "log" / "napper.out", None)]
    try:
        yield sup
    finally:
        # Not stop_all: that kills every descendant of this process, i.e. of pytest.
        sup.terminate(sup.running_children())


def state(sup: Supervisor) -> dict[str, object]:
    data: dict[str, object] = json.loads(sup.state_path.read_text())
    return data


def test_a_daemon_stopped_on_request_is_stopped_not_exited(supervisor: Supervisor) -> None:
    started = supervisor.handle({"start": ["napper"]})
    assert started["ok"] is True
    pid = started["pids"]["napper"]
    assert state(supervisor)["children"] == {"napper": pid}

    assert supervisor.handle({"stop": ["napper"]}) == {"ok": True, "pids": {}}
    after = state(supervisor)
    assert after["children"] == {} and after["exited"] == {} and after["stopped"] == ["napper"]
    assert supervisor.running_children() == []
    # Stopping it again is harmless; starting it again runs a new process.
    assert supervisor.handle({"stop": ["napper"]})["ok"] is True
    again = supervisor.handle({"start": ["napper"]})
    assert again["ok"] is True and again["pids"]["napper"] != pid
    assert state(supervisor)["stopped"] == []


def test_a_daemon_that_dies_by_itself_is_exited(supervisor: Supervisor) -> None:
    pid = supervisor.handle({"start": ["napper"]})["pids"]["napper"]
    supervisor.terminate([pid])  # what a crash looks like to the supervisor
    assert state(supervisor)["exited"] == {"napper": -15}
    assert state(supervisor)["stopped"] == []


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"stop": ["slurmctld-west"]}, "no such daemon: slurmctld-west"),
        ({"restart": ["napper"]}, 'expected {"stop" or "start": [names]}'),
        ({"stop": "napper"}, 'expected {"stop" or "start": [names]}'),
        ({"stop": ["napper"], "start": ["napper"]}, 'expected {"stop" or "start": [names]}'),
        (["stop", "napper"], 'expected {"stop" or "start": [names]}'),
    ],
)
def test_bad_requests_are_refused(supervisor: Supervisor, request_: object, error: str) -> None:
    reply = supervisor.handle(request_)
    assert reply["ok"] is False and error in reply["error"]


def test_the_control_socket_is_where_the_manager_looks() -> None:
    layout = SandboxLayout(Path("/AIF_HOME"))
    assert layout.supervisor_socket == layout.root / CONTROL_SOCKET
