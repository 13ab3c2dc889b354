"""domU images and results: the job archive, the console protocol, the xl configuration."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ringkit import ConfigError
from ringkit.xenvm.cpio import CpioWriter, read_entries
from ringkit.xenvm.domu import DomU, parse_console, xl_config
from ringkit.xenvm.domu_image import (
    JOB_KEY,
    DomUJob,
    job_entries,
    job_environment,
    shell_command,
    site_skip,
    stdlib_skip,
    write_files,
)
from ringkit.xenvm.layout import ENV_DOMU_IMAGE, ENV_VM_DIR


def test_parse_console_extracts_output_and_code() -> None:
    log = ("[    0.000000] Linux version 6.1\r\nsome kernel noise\r\n"
           "ringkit-domu: start\r\nhello\r\nworld\r\nringkit-domu: exit=3\r\n")
    assert parse_console(log) == ("hello\nworld\n", 3)


def test_parse_console_without_exit_marker() -> None:
    assert parse_console("ringkit-domu: start\npartial out") == ("partial out", None)
    assert parse_console("kernel panic") == ("kernel panic", None)


def test_xl_config() -> None:
    cfg = xl_config("peer", "/c/vmlinuz", "/tmp/r.gz", 512, 1, ['disk = ["x"]'])
    assert 'name = "peer"' in cfg and 'type = "pv"' in cfg and "memory = 512" in cfg
    assert 'on_crash = "destroy"' in cfg and cfg.endswith('disk = ["x"]\n')
    with pytest.raises(ConfigError, match="quotes"):
        xl_config("p", '/a"b', "/r", 512, 1)


def test_xl_config_pvh() -> None:
    cfg = xl_config("peer", "/k", "/r", 512, 1, guest_type="pvh")
    assert 'type = "pvh"' in cfg and 'tsc_mode = "native"' in cfg
    assert 'tsc_mode' not in xl_config("peer", "/k", "/r", 512, 1)
    with pytest.raises(ConfigError, match="guest type 'hvm'"):
        xl_config("peer", "/k", "/r", 512, 1, guest_type="hvm")


def test_xl_config_kernel_args() -> None:
    cfg = xl_config("peer", "/k", "/r", 512, 1, kernel_args=["xen_privcmd.unrestricted=1"])
    assert 'extra = "console=hvc0 quiet loglevel=1 panic=-1 xen_privcmd.unrestricted=1"' in cfg
    for bad in ('a"b', "two words", "", "x\\y", "new\nline", "tab\tbed", "cr\r"):
        with pytest.raises(ConfigError, match="kernel argument"):
            xl_config("p", "/k", "/r", 512, 1, kernel_args=[bad])


def test_domu_needs_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DOMU_IMAGE, raising=False)
    monkeypatch.delenv(ENV_VM_DIR, raising=False)
    with pytest.raises(ConfigError, match="--domu"):
        DomU("peer", ["true"])
    monkeypatch.setenv(ENV_DOMU_IMAGE, "/c/base.cpio.gz")
    monkeypatch.setenv(ENV_VM_DIR, "/c")
    with pytest.raises(ConfigError, match="name"):
        DomU("bad name!", ["true"])
    with pytest.raises(ConfigError, match="memory"):
        DomU("peer", ["true"], memory_mb=16)
    with pytest.raises(ConfigError, match="not started"):
        _ = DomU("peer", ["true"]).domid


def test_project_archive_leaves_out_vcs_venv_and_build(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proj = root / "work/proj"
    for d in ("ringkit", ".git", ".venv/bin", "build", "tests"):
        (proj / d).mkdir(parents=True)
    (proj / "ringkit/__init__.py").write_text("")
    (proj / "tests/peer.py").write_text("print('peer')\n")
    (proj / ".git/HEAD").write_text("ref")
    (proj / ".venv/bin/python").write_text("")
    (root / "opt").mkdir()
    (root / "opt/tool").write_text("#!/bin/sh\n")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    write_files(w, "/work/proj", "/work/proj/.venv", ["/opt/tool"], root=str(root))
    w.close()
    entries = {n: d for n, _, d in read_entries(buf.getvalue())}
    assert "work/proj/ringkit/__init__.py" in entries and "opt/tool" in entries
    assert entries["work/proj/tests/peer.py"] == b"print('peer')\n"
    assert not any(n.startswith(("work/proj/.git", "work/proj/.venv", "work/proj/build"))
                   for n in entries)


def test_job_travels_as_xenstore_entries() -> None:
    job = DomUJob(command=shell_command(["python", "tests/peer.py", "a b"]), cwd="/work/proj",
                  name="peer", env={"X": "1"}, venv_prefix="/work/proj/.venv",
                  modules=("loop",))
    entries = job_entries(job)
    assert entries[f"{JOB_KEY}/cmd"] == "python tests/peer.py 'a b'\n"
    assert entries[f"{JOB_KEY}/modules"] == "loop\n"
    env = entries[f"{JOB_KEY}/env"]
    assert "export RINGKIT_XEN_VM=1" in env and "export RINGKIT_XEN_DOMU=peer" in env
    assert "export X=1" in env and "export RK_CWD=/work/proj" in env
    with pytest.raises(ConfigError, match="script file"):
        job_entries(DomUJob(command="echo " + "x" * 5000, cwd="/", name="big"))


def test_job_environment_puts_the_venv_first() -> None:
    env = job_environment(DomUJob("true", "/p", "d", venv_prefix="/p/.venv",
                                  env={"PATH": "/custom"}))
    assert env["PATH"] == "/custom" and env["VIRTUAL_ENV"] == "/p/.venv"
    env = job_environment(DomUJob("true", "/p", "d", venv_prefix="/p/.venv"))
    assert env["PATH"].split(":")[0] == "/p/.venv/bin"


def test_image_filters_leave_out_dev_tools_and_tests() -> None:
    std = stdlib_skip("/py/lib/python3.11")
    assert std("/py/lib/python3.11/test") and std("/py/lib/python3.11/site-packages")
    assert std("/py/lib/python3.11/lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so")
    assert not std("/py/lib/python3.11/asyncio")
    site = site_skip("/v/site-packages")
    assert site("/v/site-packages/mypy") and site("/v/site-packages/pip")
    assert site("/v/site-packages/distutils-precedence.pth")
    assert site("/v/site-packages/material") and site("/v/site-packages/mkdocstrings_handlers")
    assert not site("/v/site-packages/pygments")  # rich's, needed at run time
    assert site("/v/site-packages/x/__pycache__/m.cpython-311.opt-1.pyc")
    assert not site("/v/site-packages/anyio") and not site("/v/site-packages/anyio/mypy.py")


def test_shell_command_needs_argv() -> None:
    with pytest.raises(ConfigError):
        shell_command([])
    assert os.path.basename(__file__) in shell_command(["cat", __file__])
