"""How fast `aif` starts: each command against bare Python and against `import click`.

Runs with no sandbox and no root. Every method is a fresh process of this
interpreter (``sys.executable``): ``python -c pass``, ``python -c "import
click"``, and the real console script (``aif`` beside the interpreter) run as
``python aif ...``. The methods are interleaved in each repetition (the order
rotates), and each figure is the median of its repetitions. ``aif list --json``
reads an empty ledger in a fresh ``AIF_HOME``; ``aif render`` renders a one-line
spec for a site of the shipped profiles (``profiles/``), with that profile's
example account, once with the site's profile in aif's profile cache (as every
run after the first that read it: ``gateway/profile_cache.py``) and once with
the cache emptied before each run (the first run after the profile changed).
aif's bytecode is compiled first, as ``pip install`` does, so that no run pays
for compiling it (``PYTHONDONTWRITEBYTECODE`` would make every run do so).

Goals (issue 8): ``aif --version`` <= 2 x ``python -c pass``; ``aif --help``,
``aif list --json`` and ``aif render`` <= 1.3 x ``python -c "import click"``
(``aif render`` with the profile not cached is shown beside it, without a goal).
Prints one table of milliseconds and ratios, and ends with one line of ratios
against the goals.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
SITE = "lumi"
ONE_LINE_SPEC = 'job = { name = "hello", command = ["hostname"] }\n'

PASS = "python -c pass"
CLICK = 'python -c "import click"'
RENDER_COLD = "aif render, profile not cached"


def methods(aif: Path, spec: Path, account: str) -> dict[str, tuple[list[str], str | None, float | None]]:
    """Each method: its argv after the interpreter, the baseline it is held to, the goal ratio."""
    return {
        PASS: (["-c", "pass"], None, None),
        CLICK: (["-c", "import click"], PASS, None),
        "aif --version": ([str(aif), "--version"], PASS, 2.0),
        "aif --help": ([str(aif), "--help"], CLICK, 1.3),
        "aif list --json (empty ledger)": ([str(aif), "list", "--json"], CLICK, 1.3),
        f"aif render SPEC --site {SITE}": (
            [str(aif), "render", str(spec), "--site", SITE, "--account", account],
            CLICK,
            1.3,
        ),
        RENDER_COLD: ([str(aif), "render", str(spec), "--site", SITE, "--account", account], CLICK, None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="repetitions of each method (default 30)")
    args = parser.parse_args()

    aif = Path(sys.executable).parent / "aif"
    if not aif.is_file():
        print(f"bench: no aif console script beside {sys.executable} (make venv)", file=sys.stderr)
        return 2
    compileall.compile_dir(REPO / "gateway", quiet=1)
    account = load_profile(REPO / "profiles" / f"{SITE}.toml").account_example

    work = Path(tempfile.mkdtemp(prefix="aif-bench-startup-"))
    try:
        spec = work / "hello.toml"
        spec.write_text(ONE_LINE_SPEC)
        env = {**os.environ, "AIF_HOME": str(work / "home")}
        runs = methods(aif, spec, account)
        # Each command once, checked: what is timed is a success, not an error path. This
        # first `aif list` also creates the empty ledger the timed ones read.
        for name, (argv, _, _) in runs.items():
            result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"bench: {name} failed ({result.returncode}): {result.stderr.strip()}", file=sys.stderr)
                return 1
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for rep in range(args.repeat):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                argv = [sys.executable, *runs[name][0]]
                if name == RENDER_COLD:
                    shutil.rmtree(work / "home" / "cache", ignore_errors=True)  # not timed
                started = time.perf_counter()
                subprocess.run(argv, env=env, capture_output=True, check=True)
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"\naif start-up, median ms of {args.repeat} interleaved runs ({sys.executable})")
    print(f"{'method':40} {'ms':>7} {'x pass':>7} {'x click':>8} {'goal':>10}")
    summary = []
    for name, (_, base, goal) in runs.items():
        ratio = median[name] / median[base] if base else None
        goal_text = f"<= {goal:g} x {'pass' if base == PASS else 'click'}" if goal else ""
        print(
            f"{name:40} {median[name]:7.1f} {median[name] / median[PASS]:7.2f} "
            f"{median[name] / median[CLICK]:8.2f} {goal_text:>10}"
        )
        if goal and ratio is not None:
            verdict = "met" if ratio <= goal else "NOT met"
            summary.append(f"{name.split(' (')[0].split(' SPEC')[0]} {ratio:.2f} (<= {goal:g}, {verdict})")
    print("\nratios vs goals: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
