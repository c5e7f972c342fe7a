"""Two curate processes at once: one writer per selection name, and no lost run.json records.

Each test starts real processes. The first one is paused at a known point (inside the work, with its
lock held) by a small wrapper that waits for a file, so the order of events is fixed by the test, not by
timing: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.reliability.runs import clustered_run

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD = 300.0  # seconds: only a guard against a hung test, never reached when things work

#: Runs ``curate ARGS`` in this process, pausing it at the first call of one function (``TARGET`` =
#: "module:attr") whose first argument ends with MATCH, until the file GO exists; writes READY when it gets there.
PAUSED = textwrap.dedent("""
    import importlib, os, sys, time
    from pathlib import Path
    ready, go, target, match, *args = sys.argv[1:]
    module, _, attr = target.partition(":")
    owner_name, _, fn_name = attr.rpartition(".")
    owner = importlib.import_module(module)
    for part in owner_name.split(".") if owner_name else []:
        owner = getattr(owner, part)
    original = getattr(owner, fn_name)

    def paused(*a, **k):
        first = str(a[1] if a and not isinstance(a[0], (str, os.PathLike)) and len(a) > 1 else a[0]) if a else ""
        if first.endswith(match) and not Path(ready).exists():
            Path(ready).write_text(str(os.getpid()))
            while not Path(go).exists():
                time.sleep(0.02)
        return original(*a, **k)

    setattr(owner, fn_name, paused)
    from curate.cli.app import main
    sys.exit(main(args))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _paused(tmp: Path, tag: str, target: str, args: list[str],
            match: str = "") -> tuple[subprocess.Popen[str], Path, Path]:
    ready, go = tmp / f"{tag}.ready", tmp / f"{tag}.go"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(ready), str(go), target, match, *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: ready.exists() or proc.poll() is not None, f"{tag} never reached {target}")
    assert ready.exists(), proc.communicate()
    return proc, ready, go


def _wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > HANG_GUARD:
            raise AssertionError(what)
        time.sleep(0.02)


def _curate(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "curate.cli.app", *args], env=_env(), capture_output=True,
                          text=True, timeout=HANG_GUARD)


def _select(run: Path, name: str, fraction: float) -> list[str]:
    return ["select", "--run", str(run), "--method", "random", "--fraction", str(fraction), "--name", name, "--json"]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return clustered_run(tmp_path / "run", 1000, dim=16, n_shards=2, k=3)


def _record(run: Path, name: str) -> dict:
    return json.loads((run / "run.json").read_text())["selections"][name]


def test_second_select_of_the_same_name_is_refused(run: Path, tmp_path: Path) -> None:
    """Two `curate select --name same` at once: before, both exited 0 and only the last writer was on disk."""
    first, _, go = _paused(tmp_path, "first", "curate.select.baselines:RandomSelector.setup", _select(run, "same", 0.3))
    second = _curate(_select(run, "same", 0.5))  # while the first holds the name
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith("error: ") and "'same' is being written by another curate command" in lines[0]
    assert second.stdout == ""
    go.write_text("")
    out, err = first.communicate(timeout=HANG_GUARD)
    assert first.returncode == 0, err
    assert json.loads(out)["kept"] == 300
    manifest = json.loads((run / "selections" / "same" / "manifest.json").read_text())
    assert manifest["params"]["fraction"] == 0.3 and manifest["counts"]["kept"] == 300  # the first one's result
    assert _record(run, "same")["kept"] == 300
    assert not list((run / "selections").glob(".*"))  # the lock file is removed with the lock


def test_a_killed_holder_frees_the_name(run: Path, tmp_path: Path) -> None:
    """The OS drops the lock of a killed select: the next select of that name runs, and cleans up the lock file."""
    first, _, _ = _paused(tmp_path, "first", "curate.select.baselines:RandomSelector.setup", _select(run, "x", 0.3))
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=HANG_GUARD)
    assert (run / "selections" / ".x.lock").exists()  # left by the killed holder
    again = _curate(_select(run, "x", 0.5))
    assert again.returncode == 0, again.stderr
    assert _record(run, "x")["kept"] == 500
    assert not list((run / "selections").glob(".*"))


def test_run_json_updates_of_two_processes_are_both_kept(run: Path, tmp_path: Path) -> None:
    """Two selections of different names finishing at once both stay recorded in run.json.

    The first is paused while it writes run.json (its update read before the second's); the second then
    either waits for it (the run.json lock) or, without a lock, writes its record first and loses it.
    """
    first, _, go = _paused(tmp_path, "first", "curate.rundir:write_json", _select(run, "a", 0.3), match="run.json")
    probe = tmp_path / "second.waiting"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        try:
            import curate.fs as fs
            original = fs._try_lock

            def try_lock(fd, wait):
                if wait and fs._try_lock.__wrapped__(fd, 0.0) is False:  # held: say so, then wait
                    Path({str(probe)!r}).write_text("")
                return original(fd, wait)

            try_lock.__wrapped__ = original
            fs._try_lock = try_lock
        except ImportError:
            pass
        from curate.cli.app import main
        sys.exit(main(sys.argv[1:]))
    """)
    second = subprocess.Popen([sys.executable, "-c", script, *_select(run, "b", 0.5)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: probe.exists() or second.poll() is not None, "the second select neither waited nor ended")
    go.write_text("")
    for proc in (first, second):
        _, err = proc.communicate(timeout=HANG_GUARD)
        assert proc.returncode == 0, err
    records = json.loads((run / "run.json").read_text())["selections"]
    assert sorted(records) == ["a", "b"], sorted(records)
    assert not list(run.glob(".*lock"))
