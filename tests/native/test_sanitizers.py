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
report -- so a clean fuzz run means the sanitizers were there and watching.  The modes with
contract checks have controls of their own: builds of SOURCE with one check dropped
(``RK_*_SKIP_*`` macros, the negative controls' builds only), which the harness must catch.

The harness, and so SOURCE, must also compile warning-free with -Wall -Wextra -Werror at the
-O2 that setup.py's cffi build uses.

Arguments in the 2**63 range once made the C's own range checks wrap (unsigned) or overflow
(int64), so that it read far outside the buffer instead of returning -1 as its comments promise
(found by this harness; no ringkit caller passed such values, since SlotCodec and RefList
validate their layout and codec.gather checks the field bounds in Python first).  The checks
now bound each value before combining two; `test_wrapping_arguments_are_refused` keeps them so.

The blkif burst server at depth (rk_blkif_aio_submit) once reported "full" (RK_AIO_STOP_FULL)
after the kernel refused the batch it had just filled its entries with: the refused requests
went to `rest` and freed their entries, so nothing might be in flight while the caller, told
to wait for a completion, waited for ever (found by this harness, which makes the kernel
refuse a submission; it now flushes before it reports full, and a refusal sends the slot on
to `rest` like every later one).
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
AIO_SESSIONS = 400  # blkif burst servers of up to 204 requests in flight: about 1 s
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



def test_the_netfront_tx_table_under_the_sanitizers(harness: Path) -> None:
    """rk_nettx_*: random frames (some empty, too long, of a bad GSO type: refused whole)
    submitted into staging areas of random lengths with random ring room, next to ids and
    pages the Python path holds; random bursts completed -- answers in ring order, extra slots'
    NULLs by position with a junk or lying id, garbage -- from buffers of exactly the slots
    they claim; after every call each page is free or held by the Python path or by exactly
    one request of the table's, and the fifo holds exactly its extra slots in flight."""
    done = run(harness, "nettx", str(SEED), str(ROUNDS))
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
    assert "no finding" in done.stdout
    counts = re.search(r"(\d+) frames sent \((\d+) extra slots\), (\d+) submissions "
                       r"refused, (\d+) answers consumed", done.stdout)
    assert counts is not None, done.stdout
    sent, extras, refused, consumed = (int(g) for g in counts.groups())
    # the fuzz reaches sending, GSO, refusals and matching, not only one of them
    assert sent > ROUNDS // 10 and extras > ROUNDS // 100 and refused > ROUNDS // 100 \
        and consumed > ROUNDS // 10, done.stdout


def test_negative_control_a_tx_table_matching_null_by_id_is_caught(workdir: Path) -> None:
    """A C that takes a NETIF_RSP_NULL's id field (which netif leaves unset) for the extra
    slot it answers: the fifo's books no longer balance."""
    exe = workdir / "sanitize_fuzz_null_by_id"
    gcc(workdir, *SANITIZE, "-DRK_NETTX_NULL_BY_ID", "-o", str(exe))
    done = run(exe, "nettx", str(SEED), str(ROUNDS))
    assert done.returncode == 2, done.stdout
    assert "rk_nettx" in done.stderr and "check failed" in done.stderr, done.stderr

AIO_COUNTS = re.compile(
    r"(?P<submitted>\d+) requests submitted, (?P<answered>\d+) answered, (?P<back>\d+) handed "
    r"back \((?P<short>\d+) short on the image\), (?P<full>\d+) stops full, (?P<order>\d+) at a "
    r"barrier, (?P<batches>\d+) calls past one batch, (?P<unaligned>\d+) unaligned, "
    r"(?P<refused>\d+) calls refused, (?P<kernel>\d+) submissions refused by the kernel, "
    r"(?P<busy>\d+) closed busy, no finding")


def run_aio(exe: Path) -> subprocess.CompletedProcess[str]:
    """The ``aio`` mode; skips, with the reason, where the kernel refuses io_uring."""
    done = run(exe, "aio", str(SEED), str(AIO_SESSIONS))
    if done.returncode == 0 and "io_uring unavailable" in done.stdout:
        pytest.skip(done.stdout.strip())
    return done


def test_the_blkif_burst_server_at_depth_under_the_sanitizers(harness: Path) -> None:
    """rk_blkif_aio_*: random and hostile bursts (bad operations and counts, refs in and out
    of the table, read-only entries, reversed and out-of-page ranges, sectors past the disk
    and near 2**64, barriers) submitted to servers of 1..204 entries against a real image
    whose size is the process's RLIMIT_FSIZE, so that I/O past its end is short; reaps of
    small and large capacity into exactly sized buffers; submissions the kernel refuses;
    servers closed with requests in the kernel.  Besides the sanitizers, the harness checks
    the contract slot by slot: consumed = submitted + rest, rest and hand-backs verbatim,
    every request answered (its id, its operation, OKAY) exactly when it moved all its bytes
    and otherwise handed back, each exactly once by sequence number, in_flight back to 0."""
    done = run_aio(harness)
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
    found = AIO_COUNTS.search(done.stdout)
    assert found, done.stdout
    counts = {key: int(value) for key, value in found.groupdict().items()}
    # the fuzz reaches every branch it is there for, not only refusals
    assert counts["answered"] > AIO_SESSIONS * 5, done.stdout
    assert counts["short"] > AIO_SESSIONS, done.stdout     # short transfers handed back
    assert counts["full"] > AIO_SESSIONS, done.stdout
    assert counts["order"] > AIO_SESSIONS, done.stdout
    assert counts["unaligned"] > AIO_SESSIONS, done.stdout
    assert counts["batches"] > 0, done.stdout              # several io_uring_enter per call
    assert counts["kernel"] > AIO_SESSIONS // 10, done.stdout
    assert counts["busy"] > AIO_SESSIONS // 20, done.stdout


def test_negative_control_a_burst_server_answering_short_transfers_is_caught(
        workdir: Path) -> None:
    """A reap that answers OKAY whatever the byte count (a READ past the image's end)."""
    exe = workdir / "sanitize_fuzz_aio_no_length_check"
    gcc(workdir, *SANITIZE, "-DRK_AIO_SKIP_LENGTH_CHECK", "-o", str(exe))
    done = run_aio(exe)
    assert done.returncode == 2, done.stdout
    assert "rk_blkif_aio_reap" in done.stderr, done.stderr
    assert "check failed: rec->moves_all" in done.stderr, done.stderr


def test_negative_control_a_burst_server_reading_into_read_only_pages_is_caught(
        workdir: Path) -> None:
    """The shared segment check without its writable test: READs into read-only entries
    submitted."""
    exe = workdir / "sanitize_fuzz_aio_no_writable_check"
    gcc(workdir, *SANITIZE, "-DRK_BLKFAST_SKIP_WRITABLE_CHECK", "-o", str(exe))
    done = run_aio(exe)
    assert done.returncode == 2, done.stdout
    assert "rk_blkif_aio_submit" in done.stderr, done.stderr
    assert "check failed: takes" in done.stderr, done.stderr


def test_negative_control_a_burst_server_without_the_rest_bound_is_caught(
        workdir: Path) -> None:
    """Submit told a `rest` shorter than the burst: it must refuse, not copy past it."""
    exe = workdir / "sanitize_fuzz_aio_no_rest_bound"
    gcc(workdir, *SANITIZE, "-DRK_AIO_SKIP_REST_BOUND", "-o", str(exe))
    done = run_aio(exe)
    assert done.returncode != 0, done.stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr
    assert "in rk_blkif_aio_submit" in done.stderr, done.stderr


@pytest.mark.parametrize("case", ["gather-offset", "gather-refs-entries",
                                  "gather-refs-ref-offset"])
def test_wrapping_arguments_are_refused(harness: Path, case: str) -> None:
    done = run(harness, "overflow", case)
    assert not REPORT.search(done.stderr), done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
