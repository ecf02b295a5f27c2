"""The portable job spec: what is accepted, and how everything else is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.errors import SpecError
from gateway.spec import load_spec, sha256_hex
from tests.unit.fuzzing import documents_from_schema

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[job]
name = "hello"
command = ["echo", "hi"]
"""


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_spec_gets_documented_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.name == "hello"
    assert spec.job.command == ("echo", "hi")
    assert spec.job.workdir == "{name}/{id}"
    r = spec.resources
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node, r.cpus_per_task) == (1, 1, 0, None)
    assert r.walltime == "01:00:00" and r.walltime_seconds == 3600
    assert spec.data.sensitivity == "public"
    assert spec.array is None
    assert spec.sha256 == hashlib.sha256(MINIMAL.encode()).hexdigest()


@pytest.mark.parametrize("data", [b"", b"abc", bytes(range(256)) * 300])
def test_the_spec_digest_is_hashlibs_sha256(data: bytes) -> None:
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_every_example_is_valid() -> None:
    examples = sorted((REPO / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        load_spec(path)


ARRAY_AND_DATA_SPEC = """
[job]
name = "sweep"
command = ["python", "train.py", "--lr", "0.1"]
sector = "health"
[resources]
nodes = 2
gpus_per_node = 4
walltime = "01:00:00"
[environment]
variables = { A = "1", B = "two" }
[data]
inputs = ["news-corpus"]
[array]
size = 8
parallel = 2
"""


def test_the_content_digest_is_that_of_the_spec_as_dataclasses_sees_it(tmp_path: Path) -> None:
    """The digest names items in the sites' records: it must never change for one spec."""
    (tmp_path / "sweep.toml").write_text(ARRAY_AND_DATA_SPEC)
    paths = [*sorted((REPO / "examples").glob("*.toml")), REPO / "tests/data/specs/gpu-example.toml"]
    paths.append(tmp_path / "sweep.toml")
    for path in paths:
        spec = load_spec(path)
        content = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("source", "sha256")}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert spec.content_digest() == hashlib.sha256(canonical.encode("utf-8")).hexdigest(), path


def test_full_issue_example(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path,
            """
[job]
name = "clinical-bert-finetune"
sector = "health"
command = ["python", "train.py", "--epochs", "3"]
workdir = "runs/{name}"
[resources]
nodes = 1
tasks_per_node = 1
gpus_per_node = 4
cpus_per_task = 8
memory_per_node = "120G"
walltime = "02:00:00"
gpu_model = "A100"
[environment]
container = "docker://nvcr.io/nvidia/pytorch:24.05-py3"
modules = ["pytorch"]
variables = { HF_HOME = "/scratch/hf" }
[data]
inputs = ["ehr-demo"]
sensitivity = "public"
outputs = ["results/"]
[placement]
site = "lumi"
exclude = []
countries = []
[array]
size = 10
""",
        )
    )
    assert spec.resources.memory_per_node_mb == 120 * 1024
    assert spec.environment.variables == (("HF_HOME", "/scratch/hf"),)
    assert spec.workdir_for("aif-x") == "runs/clinical-bert-finetune"
    assert spec.array is not None and spec.array.size == 10


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "[job]\nname='a'\ncommand=['x']\n[resources]\ngpus=4\n",
            "resources.gpus: unknown key, did you mean 'gpus_per_node'?",
        ),
        ("[job]\nname='a'\ncomand=['x']\n", "job.comand: unknown key, did you mean 'command'?"),
        ("[jobs]\nname='a'\n", "jobs: unknown key, did you mean 'job'?"),
        ("[job]\nname='a'\n", "job.command: is required"),
        ("[job]\nname='a'\ncommand=['x']\nscript='y'\n", "job.command: give exactly one"),
        ("[job]\nname='a b'\ncommand=['x']\n", "job.name: 'a b' is not allowed"),
        ('[job]\nname="a\\nb"\ncommand=["x"]\n', "job.name: 'a\\nb' is not allowed"),
        ("[job]\nname='a'\ncommand='x'\n", "job.command: 'x' is a string; expected an array of strings"),
        ("[job]\nname='a'\ncommand=['x']\nworkdir='../up'\n", "job.workdir: '../up' is not allowed"),
        ("[job]\nname='a'\ncommand=['x']\nworkdir='/abs'\n", "job.workdir: '/abs' is not allowed"),
        ("[job]\nname='a'\ncommand=['x']\nworkdir='{user}'\n", "only placeholders are {name} and {id}"),
        (
            "[job]\nname='a'\ncommand=['x']\n[resources]\nnodes=0\n",
            "resources.nodes: 0 is not allowed; expected an integer from 1",
        ),
        ("[job]\nname='a'\ncommand=['x']\n[resources]\nnodes=true\n", "resources.nodes: true is a boolean"),
        (
            "[job]\nname='a'\ncommand=['x']\n[resources]\nwalltime='2h'\n",
            "resources.walltime: '2h' is not allowed; expected [D-]HH:MM:SS",
        ),
        ("[job]\nname='a'\ncommand=['x']\n[resources]\nwalltime='00:00:00'\n", "longer than zero"),
        (
            "[job]\nname='a'\ncommand=['x']\n[resources]\nmemory_per_node='lots'\n",
            "resources.memory_per_node: 'lots'",
        ),
        (
            "[job]\nname='a'\ncommand=['x']\n[resources]\ngpu_model='A100'\n",
            "needs gpus_per_node of 1 or more",
        ),
        (
            "[job]\nname='a'\ncommand=['x']\n[data]\nsensitivity='secret'\n",
            "data.sensitivity: 'secret' is not allowed; did you mean",
        ),
        ("[job]\nname='a'\ncommand=['x']\n[environment]\nvariables={1X='y'}\n", "environment.variables.1X"),
        ("[job]\nname='a'\ncommand=['x']\n[environment]\nvariables={SLURM_X='y'}\n", "set by Slurm and aif"),
        ("[job]\nname='a'\ncommand=['x']\n[placement]\ncountries=['fi']\n", "placement.countries[0]: 'fi'"),
        ("[job]\nname='a'\ncommand=['x']\n[array]\nsize=4\nparallel=5\n", "array.parallel: 5 is not allowed"),
        ("[job]\nname='a'\ncommand=['x']\n[data]\noutputs=['../x']\n", "data.outputs[0]: '../x'"),
        ("[job\nname='a'", "not valid TOML"),
    ],
)
def test_refusals_name_file_key_value_and_what_is_allowed(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "absent.toml")


def test_cli_bad_spec_exits_3_with_one_line_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[job]\nname='a'\ncommand=['x']\n[resources]\ngpus=4\n")
    result = CliRunner().invoke(main, ["render", str(path), "--site", "lumi"])
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("aif: error: ")
    assert "Traceback" not in result.output


# -- property: no input whatsoever produces a traceback ------------------------------------

KNOWN_KEYS = {
    "job": ["name", "sector", "command", "script", "workdir"],
    "resources": [
        "nodes",
        "tasks_per_node",
        "gpus_per_node",
        "cpus_per_task",
        "memory_per_node",
        "walltime",
        "gpu_model",
    ],
    "environment": ["container", "modules", "variables"],
    "data": ["inputs", "sensitivity", "outputs"],
    "placement": ["site", "exclude", "countries"],
    "array": ["size", "parallel"],
}


def spec_documents() -> st.SearchStrategy[str]:
    return documents_from_schema(KNOWN_KEYS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(spec_documents(), st.text(max_size=200), st.binary(max_size=100)))
def test_random_documents_never_crash(tmp_path: Path, document: str | bytes) -> None:
    path = tmp_path / "random.toml"
    if isinstance(document, str):
        path.write_text(document)
    else:
        path.write_bytes(document)
    try:
        load_spec(path)
    except SpecError as exc:
        assert "\n" not in exc.message
        assert exc.message.startswith(str(path))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=spec_documents())
def test_random_documents_through_the_cli_never_show_a_traceback(tmp_path: Path, document: str) -> None:
    path = tmp_path / "random.toml"
    path.write_text(document)
    result = CliRunner().invoke(main, ["render", str(path), "--site", "sandbox-north"])
    assert result.exit_code in (0, 2, 3, 4), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


# -- every bad value is escaped: an error stays on one line ----------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '[job]\nname="a"\ncommand=["x"]\n[environment.variables]\n"A\\nB" = "x"\n',
            "environment.variables.'A\\nB': 'A\\nB' is not allowed as a name",
        ),
        ('[job]\nname="a"\ncommand=["x"]\n"na\\rme" = 1\n', "job.'na\\rme': unknown key"),
        ('"\\u2028" = 1\n', "'\\u2028': unknown key"),
        ('[job]\nname="a"\ncommand=["x"]\n[environment]\nvariables={"X\\tY"="1"}\n', "'X\\tY'"),
    ],
)
def test_keys_with_control_characters_are_escaped(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert expected in message
    assert message.isprintable(), message


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[job\n", name="two\nlines.toml")
    result = CliRunner().invoke(main, ["render", str(path), "--site", "lumi"])
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1 and "two\\nlines.toml" in result.stderr


def test_every_aif_error_is_one_line() -> None:
    from gateway.errors import AifError

    assert AifError("a\nb\r\x1b[31mc\u2028").message == "a\\nb\\r\\x1b[31mc\\u2028"
    assert str(AifError("été ok")) == "été ok"


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """Editors on Windows save UTF-8 with a BOM; TOML parsers refuse it as a stray character."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_spec(path).name == "hello"
    # Only one BOM, at the very start: anywhere else it is still an error.
    path.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + MINIMAL.encode())
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(path)


# -- lengths are bounded at validation -----------------------------------------------------

LONG = "a" * 100_000


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f"workdir = '{LONG}'", "job.workdir: 'aaaa"),
        (f"workdir = '{LONG}'", "is 100000 characters long; at most 1024 allowed"),
        (
            "workdir = '" + "{name}" * 170 + "'",
            "with this job's name and id it is 21760 characters long; at most 1024 allowed",
        ),
        ("workdir = 'runs/" + "b" * 256 + "'", "at most 255 characters between slashes"),
        (f"[data]\noutputs = ['ok/', '{LONG}']", "data.outputs[1]: 'aaa"),
        (f"[data]\noutputs = ['ok/', '{LONG}']", "is 100000 characters long; at most 1024 allowed"),
        ("[data]\noutputs = [" + "'x', " * 257 + "]", "data.outputs: 257 entries; at most 256 allowed"),
        ("script = '''" + "echo é\n" * 150_000 + "'''", "is 1200000 bytes (UTF-8); at most 1048576 allowed"),
        (f"command = ['echo', '{'x' * 131_073}']", "is 131073 bytes (UTF-8); at most 131072 allowed"),
        ("command = [" + "'x', " * 4097 + "]", "job.command: 4097 entries; at most 4096 allowed"),
        (f"[environment]\nvariables = {{ A = '{'v' * 131_073}' }}", "environment.variables.A: 'vvv"),
        ("[environment]\nmodules = [" + "'m', " * 257 + "]", "environment.modules: 257 entries"),
        ("[data]\ninputs = [" + "'d', " * 257 + "]", "data.inputs: 257 entries; at most 256 allowed"),
    ],
)
def test_lengths_are_bounded_and_the_bound_is_named(tmp_path: Path, body: str, expected: str) -> None:
    job = f"[job]\nname = '{'n' * 128}'\n"
    if not body.startswith(("script", "command")):
        job += "command = ['x']\n"
    path = write(tmp_path, job + body + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert expected in message
    assert len(message) < 1000


def test_many_variables_are_bounded(tmp_path: Path) -> None:
    names = ", ".join(f"V{i} = 'x'" for i in range(1025))
    path = write(tmp_path, f"[job]\nname = 'n'\ncommand = ['x']\n[environment]\nvariables = {{ {names} }}\n")
    with pytest.raises(SpecError, match=r"environment.variables: 1025 entries; at most 1024 allowed"):
        load_spec(path)


def test_the_largest_allowed_values_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[job]\nname = 'n'\n"
        f"workdir = 'w/{'a' * 255}/{'b' * 255}/{'c' * 255}/{'d' * 254}'\n"
        f"command = ['echo', '{'x' * 131_072}']\n"
        f"[data]\noutputs = ['{'/'.join(['o' * 255] * 4)}/']\n",
    )
    spec = load_spec(path)
    assert len(spec.job.workdir) == 1024 and len(spec.data.outputs[0]) == 1024
