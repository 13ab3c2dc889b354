"""The host side of `ringkit xen-vm run`: the exit-code protocol, output, environment, logs.

QEMU is replaced by tests/xenvm/fake_qemu.py, which follows the same run-directory protocol as
the real dom0 (stage2.sh), so these tests need no boot.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from ringkit import ConfigError
from ringkit.xenvm.boot import (
    EXIT_BOOT_FAILURE,
    EXIT_TIMEOUT,
    FINISHED_MARK,
    RunRequest,
    decide_exit,
    prune_runs,
    run,
)
from ringkit.xenvm.layout import Layout
from ringkit.xenvm.shellenv import env_script, parse_env_assignments

FAKE = Path(__file__).with_name("fake_qemu.py")


@pytest.mark.parametrize("timed_out, boot_timed_out, rc, code", [
    (False, False, "0\n", 0),
    (False, False, "7", 7),
    (True, False, "3", 3),              # the command finished: its code wins
    (True, False, None, EXIT_TIMEOUT),
    (False, True, None, EXIT_BOOT_FAILURE),
    (False, False, None, EXIT_BOOT_FAILURE),
    (False, False, "garbage", EXIT_BOOT_FAILURE),
    (False, False, "300", EXIT_BOOT_FAILURE),
])
def test_decide_exit(timed_out: bool, boot_timed_out: bool, rc: str | None, code: int) -> None:
    assert decide_exit(timed_out, boot_timed_out, rc)[0] == code


def test_env_script_round_trips_through_bash() -> None:
    tricky = "it's a \"test\" $HOME `x` \\ \n second line"
    script = env_script({"A": tricky, "B": ""}) + 'printf "%s|%s" "$A" "$B"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == tricky + "|"
    with pytest.raises(ConfigError, match="1BAD"):
        env_script({"1BAD": "x"})


def test_parse_env_assignments() -> None:
    assert parse_env_assignments(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ConfigError, match="NOEQUALS"):
        parse_env_assignments(["NOEQUALS"])


def _request(tmp_path: Path, command: list[str], **kw: object) -> RunRequest:
    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    fake.chmod(0o755)
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    base: dict[str, object] = dict(command=command, cwd=project, rw_dirs=[project],
                                   qemu=str(fake), timeout=60, boot_timeout=60)
    base.update(kw)
    return RunRequest(**base)  # type: ignore[arg-type]


def _run(tmp_path: Path, request: RunRequest) -> tuple[int, str, str, Layout]:
    layout = Layout(tmp_path / "cache")
    out, err = io.BytesIO(), io.StringIO()
    code = run(layout, request, "6.1.0-test", out=out, err=err)
    return code, out.getvalue().decode(), err.getvalue(), layout


def test_command_code_output_and_environment(tmp_path: Path) -> None:
    request = _request(tmp_path, ["sh", "-c", 'echo "$RINGKIT_XEN_VM $FOO"; pwd; '
                                  'echo "to stderr" >&2; echo "an arg with spaces"; exit 7'],
                       env={"FOO": "bar baz"})
    code, out, err, layout = _run(tmp_path, request)
    assert code == 7
    assert out.splitlines() == ["1 bar baz", str(tmp_path / "project"), "to stderr",
                                "an arg with spaces"]
    kept = list(layout.runs.iterdir())
    assert len(kept) == 1 and str(kept[0]) in err            # failed: logs kept, path printed
    assert (kept[0] / "console.log").read_text().startswith("Xen 4.17 (fake)")


def test_success_cleans_up(tmp_path: Path) -> None:
    code, out, _, layout = _run(tmp_path, _request(tmp_path, ["true"]))
    assert code == 0 and out == ""
    assert list(layout.runs.iterdir()) == []


def test_crash_is_a_boot_failure_with_the_console_tail(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "crash")
    code, _, err, _ = _run(tmp_path, _request(tmp_path, ["true"]))
    assert code == EXIT_BOOT_FAILURE
    assert "Panic on CPU 0: fake" in err


def test_a_boot_that_never_came_up_is_tried_again(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "crash-once")
    monkeypatch.setenv("FAKE_QEMU_STATE", str(tmp_path / "booted-once"))
    code, out, err, layout = _run(tmp_path, _request(tmp_path, ["sh", "-c", "echo ran; exit 3"]))
    assert code == 3 and out == "ran\n"                     # the command ran exactly once
    assert "booting again" in err and "Panic on CPU 0: fake" in err
    kept = list(layout.runs.iterdir())
    assert [p.name for p in kept[0].glob("console-boot*.log")] == ["console-boot1.log"]


def test_boot_attempts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "crash")
    code, _, err, _ = _run(tmp_path, _request(tmp_path, ["true"], boot_attempts=3))
    assert code == EXIT_BOOT_FAILURE
    assert err.count("booting again") == 2


def test_a_command_that_started_is_never_run_again(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    code, _, err, _ = _run(tmp_path, _request(tmp_path, ["true"], timeout=1.0))
    assert code == EXIT_TIMEOUT and "booting again" not in err


def test_boot_timeout_is_a_boot_failure(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "never-ready")
    code, _, err, _ = _run(tmp_path, _request(tmp_path, ["true"], boot_timeout=1.0))
    assert code == EXIT_BOOT_FAILURE and "boot timeout" in err


def test_time_limit_gives_124(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    code, _, err, _ = _run(tmp_path, _request(tmp_path, ["true"], timeout=1.0))
    assert code == EXIT_TIMEOUT and "time limit" in err


def test_pruning_spares_unfinished_runs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "cache")
    for i in range(4):
        d = layout.runs / f"2026-{i}"
        d.mkdir(parents=True)
        if i != 0:
            (d / FINISHED_MARK).write_text("1\n")
    prune_runs(layout, 2)
    assert sorted(p.name for p in layout.runs.iterdir()) == ["2026-0", "2026-2", "2026-3"]


def test_missing_rw_dir_is_named(tmp_path: Path) -> None:
    request = _request(tmp_path, ["true"], rw_dirs=[tmp_path / "nope"])
    with pytest.raises(ConfigError, match="nope"):
        _run(tmp_path, request)
