"""The native helper's C under AddressSanitizer and UBSan.

Project rule: native code runs under ASan/UBSan in a test target.  tests/native/sanitize_fuzz.c
#includes ``ringkit._native._build.SOURCE`` -- written out verbatim, so the C fuzzed is the C
cffi compiles -- and calls every function in it with arguments from a seeded PRNG: buffers
malloc'd with exactly the length the call claims (0 and a few bytes included), output arrays
of exactly the entries the contract gives them, hostile counts, strides, offsets, sizes and
ref-list specs, random blkif slots and indirect segment lists.  A byte read or written past
any of them is a sanitizer report; the fuzz test fails on any report.  The memory primitives
get valid offsets only: their bounds are checked on the Python side, by contract.

Negative control: the same binary, in its ``control`` mode, makes one deliberately broken call
(rk_gather told that its 15-byte buffer has 16 bytes) and must die with an AddressSanitizer
report -- so a clean fuzz run means the sanitizers were there and watching.

The harness, and so SOURCE, must also compile warning-free with -Wall -Wextra -Werror at the
-O2 that setup.py's cffi build uses.

Arguments in the 2**63 range once made the C's own range checks wrap (unsigned) or overflow
(int64), so that it read far outside the buffer instead of returning -1 as its comments promise
(found by this harness; no ringkit caller passed such values, since SlotCodec and RefList
validate their layout and codec.gather checks the field bounds in Python first).  The checks
now bound each value before combining two; `test_wrapping_arguments_are_refused` keeps them so.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from _tools import require_tools

from ringkit._native._build import SOURCE

HARNESS = Path(__file__).with_name("sanitize_fuzz.c")
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
WARNINGS = ["-O2", "-Wall", "-Wextra", "-Werror"]
SEED = 20240611
ROUNDS = 20_000  # of each function: about 1 s under the sanitizers
URING_RINGS = 150  # io_uring objects of up to 96 requests each
# detect_leaks=0: the C under test never allocates (the harness frees what it mallocs), and
# LeakSanitizer's stop-the-world needs ptrace, which some containers refuse.
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
REPORT = re.compile(r"AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer|runtime error:")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the harness and the shipped C it #includes, side by side.

    The harness is copied too: a quoted #include looks in the includer's directory first, so a
    stray rk_native_source.c next to tests/native/sanitize_fuzz.c could never shadow SOURCE.
    """
    require_tools("gcc", why="build the native helper's C under AddressSanitizer and UBSan")
    work = tmp_path_factory.mktemp("sanitize")
    (work / "rk_native_source.c").write_text(SOURCE)
    (work / HARNESS.name).write_text(HARNESS.read_text())
    return work


def gcc(work: Path, *args: str) -> None:
    done = subprocess.run(["gcc", *args, str(work / HARNESS.name)], cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"gcc {' '.join(args)}:\n{done.stderr}"


@pytest.fixture(scope="module")
def harness(workdir: Path) -> Path:
    """The harness built with the sanitizers."""
    exe = workdir / "sanitize_fuzz"
    gcc(workdir, *SANITIZE, "-o", str(exe))
    return exe


def run(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120,
                          env=ENV)


def test_shipped_c_compiles_without_warnings(workdir: Path) -> None:
    # The harness calls every function of SOURCE, so none is an unused static.
    gcc(workdir, *WARNINGS, "-c", "-o", str(workdir / "warnings.o"))


def test_fuzzing_the_shipped_c_raises_no_sanitizer_report(harness: Path) -> None:
    done = run(harness, "fuzz", str(SEED), str(ROUNDS))
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stderr}"
    assert "no finding" in done.stdout


def test_negative_control_an_over_read_is_reported(harness: Path) -> None:
    done = run(harness, "control")
    assert done.returncode != 0, done.stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr
    assert "in rk_gather" in done.stderr, done.stderr


def test_the_io_uring_ring_under_the_sanitizers(harness: Path) -> None:
    """rk_uring_*: random submissions (bad fds, hostile ranges, too many buffers, cancels),
    completions reaped into exactly sized arrays, close with requests still in the kernel."""
    done = run(harness, "uring", str(SEED), str(URING_RINGS))
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
    if "io_uring unavailable" in done.stdout:
        pytest.skip(done.stdout.strip())
    assert "no finding" in done.stdout


def test_the_blkif_fast_path_under_the_sanitizers(harness: Path) -> None:
    """rk_pgrant_* and rk_blkif_serve: table edits checked against a model, bursts in buffers
    of exactly the claimed lengths served through exactly sized pages (a READ only into
    writable entries), bursts that do not fit refused; INDIRECT requests (up to 1200 segments
    and 65535 claimed) whose lists live in those pages, served only within the advertised
    limit and with every indirect page in the table."""
    done = run(harness, "blkfast", str(SEED), str(ROUNDS))
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
    assert "no finding" in done.stdout
    served = int(done.stdout.split(" requests served")[0].rsplit(" ", 1)[1])
    assert served > ROUNDS // 40, done.stdout   # the fuzz reaches the I/O, not only refusals
    indirect = int(done.stdout.split(" indirect)")[0].rsplit("(", 1)[1])
    assert indirect > ROUNDS // 400, done.stdout   # INDIRECT requests too


def test_negative_control_a_fast_path_without_the_writable_check_is_caught(
        workdir: Path) -> None:
    exe = workdir / "sanitize_fuzz_no_writable_check"
    gcc(workdir, *SANITIZE, "-DRK_BLKFAST_SKIP_WRITABLE_CHECK", "-o", str(exe))
    done = run(exe, "blkfast", str(SEED), str(ROUNDS))
    assert done.returncode == 2, done.stdout
    assert "check failed: s[0] == 1 || entries[at].writable" in done.stderr, done.stderr


def test_negative_control_a_fast_path_without_the_indirect_limit_is_caught(
        workdir: Path) -> None:
    exe = workdir / "sanitize_fuzz_no_indirect_limit"
    gcc(workdir, *SANITIZE, "-DRK_BLKFAST_SKIP_INDIRECT_LIMIT", "-o", str(exe))
    done = run(exe, "blkfast", str(SEED), str(ROUNDS))
    assert done.returncode == 2, done.stdout
    assert "check failed: nseg <= (max_indirect < 4096 ? max_indirect : 4096)" in done.stderr, \
        done.stderr


def test_the_blkfront_shadow_table_under_the_sanitizers(harness: Path) -> None:
    """rk_shadow_*: random batches (misaligned and bad ops refused by rk_shadow_check) submitted
    into staging areas of random lengths, random and hostile response bursts completed, orphans
    marked and freed; after every call each pool page is free or held by exactly one request
    in flight, and every response consumed answered its request with its own operation; an
    INDIRECT request (past 11 pages) names its indirect page, whose list names its data pages
    with the right sectors.  A batch's buffers are freed once only orphans point into them (a
    touch is a report)."""
    done = run(harness, "shadow", str(SEED), str(ROUNDS))
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
    assert "no finding" in done.stdout
    consumed = int(done.stdout.split(" answers consumed")[0].rsplit(" ", 1)[1])
    assert consumed > ROUNDS // 40, done.stdout   # the fuzz reaches the matching, not only refusals
    indirect = int(done.stdout.split(" indirect)")[0].rsplit("(", 1)[1])
    assert indirect > ROUNDS // 1000, done.stdout   # INDIRECT requests written and checked


def test_negative_control_a_shadow_table_copying_list_pages_is_caught(workdir: Path) -> None:
    """A C that copies an INDIRECT READ's indirect pages into the caller's buffer too."""
    exe = workdir / "sanitize_fuzz_no_data_bound"
    gcc(workdir, *SANITIZE, "-DRK_SHADOW_SKIP_DATA_BOUND", "-o", str(exe))
    done = run(exe, "shadow", str(SEED), str(ROUNDS))
    assert done.returncode != 0, done.stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr
    assert "in rk_shadow_complete" in done.stderr, done.stderr


def test_negative_control_a_shadow_table_without_the_operation_check_is_caught(
        workdir: Path) -> None:
    exe = workdir / "sanitize_fuzz_no_operation_check"
    gcc(workdir, *SANITIZE, "-DRK_SHADOW_SKIP_OPERATION_CHECK", "-o", str(exe))
    done = run(exe, "shadow", str(SEED), str(ROUNDS))
    assert done.returncode == 2, done.stdout
    assert "check failed: rsp[8] == expect[k]" in done.stderr, done.stderr


@pytest.mark.parametrize("case", ["gather-offset", "gather-refs-entries",
                                  "gather-refs-ref-offset"])
def test_wrapping_arguments_are_refused(harness: Path, case: str) -> None:
    done = run(harness, "overflow", case)
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
