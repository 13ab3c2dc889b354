"""The transport conformance contract across two real domains: dom0 and one harness domU.

`ringkit.testing`'s checks drive two handles in one process (in dom0 on real Xen, both handles
are domain 0).  Here the same behaviours cross a domain boundary.  One domU runs
tests/xen/cross_peer.py, which executes steps on its own `ringkit.xen` handle and judges what it
sees.  dom0 runs the same step runner in-process and sends the domU its steps through xenstore.
Each scenario below is written once over two sides ``a`` and ``b`` and runs twice: domU -> dom0,
then dom0 -> domU.  So each domain both shares and maps, offers and binds, and is the one that
leaves and the one that survives.

* grants: share -> map round trip, the early dealloc, multi-page contiguous maps (in the given
  order, and mixed from two grants), read-only grants;
* event channels: Xen's bind-time pending event, ping-pong, coalescing, a blocked waiter;
* unmap-notify: the mapper's and the granter's unmap clear the byte and signal; kill -9 of a
  child process that shares or maps (in the domU and in dom0) does the same;
* peer gone: dom0 sees the domU's end close, whether the domU offered or bound the port
  (EVTCHNOP_status polling); a domU whose kernel blocks privcmd's hypercalls (Linux since
  XSA-482 blocks them in a domU without a target domain: EPERM) cannot see dom0's end close, so
  there the channel must stay quiet.  A second domU, booted with ``xen_privcmd.unrestricted=1``,
  must see it: the blocking is Linux's, not Xen's;
* refusals: unknown, revoked, or someone else's refs, ports offered to someone else, double
  binds, double closes, the grant limit; each with its typed error.

Both sides end with nothing held (`Domain.leaks()`).  The domU's verdict comes back in its exit
status and output.  Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _harness import DOMU_TEST
from cross_peer import Json, Mailbox, StepRunner, page_digest  # tests/xen is on sys.path

from ringkit import ConfigError, EventChannelError, GrantError, PeerGoneError, ResourceLimitError
from ringkit.abc import PAGE_SIZE, Domain, Store
from ringkit.xenvm.domu import DomU
from ringkit.xenvm.layout import ENV_RUN_DIR

PEER = str(Path(__file__).with_name("cross_peer.py"))
BOOT_SECONDS = 600.0
"""From `xl create` to the domU's first message: creation and a Python start under TCG."""
REPLY_SECONDS = 480.0
"""Bound on one domU step (longer than any wait or child start inside it)."""
UNKNOWN_REF = 0x7FFF_FFF0
"""A grant reference nobody creates."""
NO_PORT = 0x7FFF
"""A port number no domain here has allocated."""
GRANT_LIMIT = 1024
"""gntalloc's default limit of pages granted at once."""
PROGRESS_LOG = "conformance-domu.progress"
"""Where `progress` lines go in the harness's run directory."""
NO_LEAKS = {"grants": 0, "maps": 0, "ports": 0, "fds": 0, "watches": 1}
"""Nothing held but the one watch of each side's mailbox."""

pytestmark = DOMU_TEST


_T0 = time.monotonic()


def progress(text: str) -> None:
    """A timestamped line, also appended to the harness's run directory (kept when a run fails
    or times out, unlike pytest's captured output)."""
    line = f"[conformance-domu +{time.monotonic() - _T0:.1f}s] {text}"
    print(line, flush=True)
    run_dir = os.environ.get(ENV_RUN_DIR)
    if run_dir:
        with contextlib.suppress(OSError), open(os.path.join(run_dir, PROGRESS_LOG), "a") as f:
            f.write(line + "\n")


def hx(data: bytes) -> str:
    return data.hex()


class Side:
    """One domain's step runner, local or in the domU; every step's verdict is asserted."""

    def __init__(self, name: str, domid: int, run: Callable[[Json], Awaitable[Json]]) -> None:
        self.name = name
        self.domid = domid
        self._run = run
        self.detects_peer_close = True
        """Whether this side's transport can see a channel's remote end close (see `left`)."""

    async def step(self, op: str, expect: Json | None = None, **args: Any) -> Json:
        reply = await self._run({"op": op, "args": args, "expect": expect or {}})
        assert reply["verdict"] == "pass", \
            f"{self.name} (domain {self.domid}) {op}({args}): {reply['verdict']}"
        result: Json = reply.get("result") or {}
        return result

    async def expect(self, op: str, result: Json, **args: Any) -> Json:
        """A step that must succeed with these fields in its result."""
        return await self.step(op, {"result": result}, **args)

    async def refused(self, error: type[BaseException], op: str, **args: Any) -> Json:
        """A step that must fail with `error` (and an errno, for Xen's refusals)."""
        errno = issubclass(error, GrantError | EventChannelError)
        return await self.step(op, {"raises": error.__name__, "errno": errno}, **args)

    async def quiet(self, channel: str) -> None:
        await self.expect("quiet", {"quiet": True}, name=channel)

    async def left(self, channel: str) -> None:
        """The remote end of `channel` closed: a wait raises PeerGoneError (twice) and notify
        is refused.  Where Xen will not tell this side (a domU kernel refusing EVTCHNOP_status
        through privcmd), the channel must at least stay quiet: no event, no error."""
        if not self.detects_peer_close:
            await self.quiet(channel)
            return
        await self.refused(PeerGoneError, "wait", name=channel)
        await self.refused(PeerGoneError, "wait", name=channel)
        await self.refused(EventChannelError, "notify", name=channel)


class _Remote:
    """Sends steps to the domU and waits for their replies, one at a time."""

    def __init__(self, mailbox: Mailbox, store: Store, domid: int) -> None:
        self._mailbox = mailbox
        self._store = store
        self._exit_node = f"/local/domain/{domid}/data/ringkit-exit"
        self._seq = 0

    async def still_running(self) -> None:
        """Give up waiting once the domU's program ended (the harness's init stored its exit
        status); its console says why."""
        if await self._store.exists(self._exit_node):
            code = await self._store.read(self._exit_node)
            raise AssertionError(f"the domU's program ended (exit status {code}) "
                                 "while dom0 waited for its answer")

    async def receive(self, seq: int, timeout: float) -> Json:
        return await self._mailbox.receive(seq, timeout, self.still_running)

    async def __call__(self, message: Json) -> Json:
        self._seq += 1
        await self._mailbox.send({"seq": self._seq, **message})
        return await self.receive(self._seq, REPLY_SECONDS)

    async def finish(self) -> Json:
        reply = await self({"op": "finish"})
        result: Json = reply["result"]
        return result


async def _connect(a: Side, b: Side, name: str) -> None:
    """`a` offers a port, `b` binds it and takes the one event the bind leaves pending."""
    port = (await a.expect("alloc_unbound", {"remote": b.domid}, name=name, remote=b.domid))["port"]
    await b.expect("bind", {"remote": a.domid}, name=name, remote=a.domid, port=port)
    await b.step("wait", name=name)


# --------------------------------------------------------------------------- grants


async def round_trip(a: Side, b: Side) -> None:
    """`a` shares a page, `b` maps it: writes show through both ways; the mapping outlives the
    granter's early close."""
    shared = await a.expect("share", {"len": PAGE_SIZE, "writable": True, "zeroed": True,
                                      "peer": b.domid}, name="rt", peer=b.domid)
    refs = shared["refs"]
    assert len(refs) == 1
    await a.step("write", name="rt", offset=0, data=hx(b"hello"))
    await b.expect("map", {"len": PAGE_SIZE, "writable": True, "readonly": False, "refs": refs,
                           "peer": a.domid}, name="rt", peer=a.domid, refs=refs)
    await b.expect("read", {"data": hx(b"hello")}, name="rt", offset=0, length=5)
    await b.step("write", name="rt", offset=PAGE_SIZE - 5, data=hx(b"world"))
    await a.expect("read", {"data": hx(b"world")}, name="rt", offset=PAGE_SIZE - 5, length=5)
    await a.step("close", name="rt")            # early dealloc: the mapping stays valid
    await b.step("write", name="rt", offset=100, data=hx(b"\x2a"))
    await b.expect("read", {"data": hx(b"\x2a")}, name="rt", offset=100, length=1)
    await b.expect("read", {"data": hx(b"hello")}, name="rt", offset=0, length=5)
    await b.step("close", name="rt")


async def multi_page(a: Side, b: Side) -> None:
    """Three refs map as one contiguous buffer in the order given; refs of two grants mix."""
    refs = (await a.expect("share", {"len": 3 * PAGE_SIZE}, name="mp", peer=b.domid,
                           count=3))["refs"]
    await a.step("fill", name="mp", values=[1, 2, 3])
    await b.expect("map", {"len": 3 * PAGE_SIZE}, name="mp", peer=a.domid, refs=refs)
    await b.expect("digest", {"sha256": page_digest([1, 2, 3])}, name="mp")
    await b.step("write", name="mp", offset=PAGE_SIZE - 2, data=hx(b"ABCD"))  # straddles
    await a.expect("read", {"data": hx(b"ABCD")}, name="mp", offset=PAGE_SIZE - 2, length=4)
    await b.expect("map", {"len": 3 * PAGE_SIZE}, name="rev", peer=a.domid,
                   refs=list(reversed(refs)))
    await b.expect("marks", {"marks": [3, 2, 1]}, name="rev", offset=10)
    await b.step("close", name="rev")
    other = (await a.step("share", name="other", peer=b.domid))["refs"]
    await a.step("write", name="other", offset=0, data=hx(b"next"))
    await b.step("map", name="mixed", peer=a.domid, refs=[refs[2], other[0], refs[0]])
    await b.expect("marks", {"marks": [3, 0, 1]}, name="mixed", offset=10)
    await b.expect("read", {"data": hx(b"next")}, name="mixed", offset=PAGE_SIZE, length=4)
    await b.step("write", name="mixed", offset=PAGE_SIZE + 4, data=hx(b"\x77"))
    await a.expect("read", {"data": hx(b"\x77")}, name="other", offset=4, length=1)
    for side, name in ((b, "mixed"), (a, "other"), (b, "mp"), (a, "mp")):
        await side.step("close", name=name)


async def read_only(a: Side, b: Side) -> None:
    """A read-only grant: a writable map is refused; the read-only mapping sees the granter's
    writes and cannot be written (nor carry a clear-byte unmap-notify)."""
    refs = (await a.expect("share", {"writable": False, "zeroed": True}, name="ro",
                           peer=b.domid, writable=False))["refs"]
    await b.refused(GrantError, "map", name="ro-rw", peer=a.domid, refs=refs, writable=True)
    await b.expect("map", {"writable": False, "readonly": True}, name="ro", peer=a.domid,
                   refs=refs, writable=False)
    await a.step("write", name="ro", offset=7, data=hx(b"\x5a"))
    await b.expect("read", {"data": hx(b"\x5a")}, name="ro", offset=7, length=1)
    await b.refused(TypeError, "write", name="ro", offset=7, data=hx(b"\x01"))
    await b.refused(ConfigError, "set_unmap_notify", name="ro", offset=7)
    await b.expect("read", {"data": hx(b"\x5a")}, name="ro", offset=7, length=1)
    await b.step("close", name="ro")
    await a.step("close", name="ro")


# --------------------------------------------------------------------------- event channels


async def events(a: Side, b: Side) -> None:
    """`a` offers, `b` binds: what `a` sent while unbound is dropped; the bind leaves exactly
    one event pending, on `b`'s port only; then ping-pong, coalescing, a flood that never
    blocks, and a waiter that sleeps before the event arrives, both ways."""
    port = (await a.step("alloc_unbound", name="ev", remote=b.domid))["port"]
    await a.step("notify", name="ev", times=3)   # unbound: Xen drops these
    await b.step("bind", name="ev", remote=a.domid, port=port)
    await b.step("wait", name="ev")
    await b.quiet("ev")                          # exactly one pending event
    await a.quiet("ev")                          # and none on the offering side
    for _ in range(3):
        await b.step("notify", name="ev")
        await a.step("wait", name="ev")
        await a.step("notify", name="ev")
        await b.step("wait", name="ev")
    for sender, receiver in ((b, a), (a, b)):
        # Across domains, notifications coalesce only while the receiver has not yet taken
        # the first one (its port stays masked until then); the sender's later ones may
        # arrive after that and wake it again, as often as the two CPUs interleave.  What
        # holds regardless of timing: none lost, none made up (at most one wake-up per
        # notification), then quiet.  That they do coalesce is the loopback suite's check, in
        # one process, where the reader cannot run between the notifies.
        for times in (5, 2_000):
            await sender.step("notify", name="ev", times=times)
            await receiver.step("wait", name="ev")
            extra = (await receiver.step("drain", name="ev", limit=times))["wakeups"]
            assert extra + 1 <= times, \
                f"{times} notifications woke {receiver.name} {extra + 1} times or more"
            await receiver.quiet("ev")
        await receiver.expect("wait_start", {"blocked": True}, name="ev")
        await sender.step("notify", name="ev")
        await receiver.step("wait_join", name="ev")
    await b.step("close", name="ev")
    await a.step("close", name="ev")


async def peer_gone(a: Side, b: Side) -> None:
    """When the binder leaves, the offerer gets what it sent first, then PeerGoneError, and its
    notify is refused; when the offerer leaves, the binder learns it too."""
    await _connect(a, b, "pg")
    await b.step("notify", name="pg")
    await b.step("close", name="pg")
    await a.step("wait", name="pg")              # the event sent before the close
    await a.left("pg")
    await a.step("close", name="pg")
    await a.refused(anyio.ClosedResourceError, "notify", name="pg")

    await _connect(a, b, "pg2")
    await a.step("close", name="pg2")
    await b.left("pg2")
    await b.step("close", name="pg2")


# --------------------------------------------------------------------------- unmap-notify


async def unmap_notify(a: Side, b: Side) -> None:
    """`a` shares, `b` maps: either one's unmap clears the agreed byte in the other's view and
    signals the other's port; the actions also work alone; a read-only grant's byte too."""
    await _connect(a, b, "un-ev")
    refs = (await a.step("share", name="un", peer=b.domid, count=2))["refs"]
    await b.step("map", name="un", peer=a.domid, refs=refs)
    await a.step("write", name="un", offset=PAGE_SIZE + 9, data=hx(b"\x01"))
    await b.step("set_unmap_notify", name="un", offset=PAGE_SIZE + 9, channel="un-ev")
    await b.step("close", name="un")             # the mapper's unmap
    await a.step("wait", name="un-ev")
    await a.expect("read", {"data": "00"}, name="un", offset=PAGE_SIZE + 9, length=1)

    await b.step("map", name="un2", peer=a.domid, refs=refs)
    await a.step("write", name="un", offset=3, data=hx(b"\x01"))
    await b.expect("read", {"data": "01"}, name="un2", offset=3, length=1)
    await a.step("set_unmap_notify", name="un", offset=3, channel="un-ev")
    await a.step("close", name="un")             # the granter's unmap
    await b.step("wait", name="un-ev")
    await b.expect("read", {"data": "00"}, name="un2", offset=3, length=1)
    await b.step("close", name="un2")

    one = (await a.step("share", name="one", peer=b.domid))["refs"]
    await b.step("map", name="one", peer=a.domid, refs=one)
    await a.step("write", name="one", offset=5, data=hx(b"\x01"))
    await b.step("set_unmap_notify", name="one", offset=5)      # the byte only
    await b.step("close", name="one")
    await a.expect("read", {"data": "00"}, name="one", offset=5, length=1)
    await a.quiet("un-ev")
    await a.step("set_unmap_notify", name="one", channel="un-ev")  # the event only
    await a.step("close", name="one")
    await b.step("wait", name="un-ev")

    ro = (await a.step("share", name="ro", peer=b.domid, writable=False))["refs"]
    await b.step("map", name="ro", peer=a.domid, refs=ro, writable=False)
    await a.step("write", name="ro", offset=8, data=hx(b"\x01"))
    await a.step("set_unmap_notify", name="ro", offset=8, channel="un-ev")
    await a.step("close", name="ro")
    await b.step("wait", name="un-ev")
    await b.expect("read", {"data": "00"}, name="ro", offset=8, length=1)
    await b.step("close", name="ro")
    await b.step("close", name="un-ev")
    await a.step("close", name="un-ev")


async def kill_child(a: Side, b: Side) -> None:
    """A child process in `a` shares a page with `b` and maps one of `b`'s, each with an
    unmap-notify on its own port; kill -9 of the child clears the byte in `b`'s mapping of the
    child's page and in `b`'s own page, signals both of `b`'s ports, and then `b` sees the
    child's ports gone."""
    refs = (await b.step("share", name="kp", peer=a.domid))["refs"]
    await b.step("write", name="kp", offset=64, data=hx(b"\x5a"))
    share_port = (await b.step("alloc_unbound", name="k-share", remote=a.domid))["port"]
    map_port = (await b.step("alloc_unbound", name="k-map", remote=a.domid))["port"]
    lines = (await a.step("spawn", name="child",
                          args=[b.domid, share_port, map_port, refs[0], 64]))["lines"]
    await b.step("map", name="kq", peer=a.domid, refs=[int(lines[0])])
    await b.expect("read", {"data": "5a"}, name="kq", offset=64, length=1)
    await b.expect("read", {"data": "5a"}, name="kp", offset=64, length=1)
    await b.expect("wait_start", {"blocked": True}, name="k-share")
    await b.expect("wait_start", {"blocked": True}, name="k-map")
    await a.expect("kill", {"returncode": -9}, name="child")
    await b.step("wait_join", name="k-share")
    await b.step("wait_join", name="k-map")
    await b.expect("read", {"data": "00"}, name="kq", offset=64, length=1)  # the sharer died
    await b.expect("read", {"data": "00"}, name="kp", offset=64, length=1)  # the mapper died
    await b.left("k-share")
    await b.left("k-map")
    for name in ("kq", "kp", "k-share", "k-map"):   # kq: the page outlived its owner till now
        await b.step("close", name=name)


# --------------------------------------------------------------------------- refusals


async def refusals(a: Side, b: Side) -> None:
    """`b` tries what Xen must refuse with `a`'s grants and ports; `a` misuses its own."""
    await b.refused(GrantError, "map", name="x", peer=a.domid, refs=[UNKNOWN_REF])
    to_b = (await a.step("share", name="to-b", peer=b.domid))["refs"]
    await a.refused(GrantError, "map", name="x", peer=a.domid, refs=to_b)  # granted to b
    to_self = (await a.step("share", name="to-self", peer=a.domid))["refs"]
    await b.refused(GrantError, "map", name="x", peer=a.domid, refs=to_self)  # granted to a
    revoked = (await a.step("share", name="revoked", peer=b.domid))["refs"]
    await a.step("close", name="revoked")
    await b.refused(GrantError, "map", name="x", peer=a.domid, refs=revoked)
    await a.refused(GrantError, "close", name="revoked")        # a double unshare
    await b.step("map", name="m", peer=a.domid, refs=to_b)
    await b.step("close", name="m")
    await b.refused(GrantError, "close", name="m")              # a double unmap
    await a.refused(ResourceLimitError, "share", name="x", peer=b.domid, count=GRANT_LIMIT + 1)

    await b.refused(EventChannelError, "bind", name="x", remote=a.domid, port=NO_PORT)
    own = (await a.step("alloc_unbound", name="own", remote=a.domid))["port"]
    await b.refused(EventChannelError, "bind", name="x", remote=a.domid, port=own)
    await _connect(a, b, "ok")
    port = (await a.step("alloc_unbound", name="ok2", remote=b.domid))["port"]
    await b.step("bind", name="ok2", remote=a.domid, port=port)
    await b.refused(EventChannelError, "bind", name="x", remote=a.domid, port=port)  # bound
    for side, name in ((b, "ok2"), (a, "ok2"), (b, "ok"), (a, "ok"), (a, "own"),
                       (a, "to-b"), (a, "to-self")):
        await side.step("close", name=name)


Scenario = Callable[[Side, Side], Awaitable[None]]
SCENARIOS: tuple[Scenario, ...] = (round_trip, multi_page, read_only, events, peer_gone,
                                   unmap_notify, kill_child, refusals)


async def drive(dom: Domain, domid: int, scenarios: Sequence[Scenario] = SCENARIOS, *,
                domu_detects: bool = False) -> Json:
    """Run `scenarios` both ways between `dom` and the step runner obeying in domain `domid`,
    check both sides hold nothing, tell the runner to finish; return its summary.  With
    `domu_detects`, the domU must be able to tell that a channel's remote end closed."""
    conf = f"/local/domain/{domid}/data/rk-conf"
    async with Mailbox.open(dom.store, f"{conf}/reply", f"{conf}/cmd") as mailbox, \
            anyio.create_task_group() as tg:
        runner = StepRunner("dom0", dom, tg)
        remote = _Remote(mailbox, dom.store, domid)
        try:
            hello = await remote.receive(0, BOOT_SECONDS)
            assert hello["result"] == {"domid": domid}, hello
            progress(f"domain {domid} is ready for steps")
            here, there = Side("dom0", dom.domid, runner.execute), Side("domU", domid, remote)
            for side in (here, there):
                side.detects_peer_close = (await side.step("detects_peer_close"))["detects"]
                progress(f"{side.name} can tell when a channel's remote end closes: "
                         f"{side.detects_peer_close}")
            # dom0 may always ask Xen (the loopback suite relies on it); a domU's kernel may
            # block privcmd's hypercalls (Linux since XSA-482, unless booted with
            # xen_privcmd.unrestricted=1), leaving it only quiet
            assert here.detects_peer_close, "dom0 cannot ask Xen for a port's status"
            assert there.detects_peer_close or not domu_detects, \
                "the domU cannot ask Xen for a port's status, although privcmd is unrestricted"
            for scenario in scenarios:
                for a, b in ((there, here), (here, there)):
                    t0 = time.monotonic()
                    try:
                        await scenario(a, b)
                    except Exception as exc:
                        raise AssertionError(f"{scenario.__name__}(a={a.name}, b={b.name}): "
                                             f"{type(exc).__name__}: {exc}") from exc
                    progress(f"{scenario.__name__}(a={a.name}, b={b.name}): passed in "
                             f"{time.monotonic() - t0:.1f}s")
            await here.expect("leaks", NO_LEAKS)
            await there.expect("leaks", NO_LEAKS)
            summary = await remote.finish()
        finally:
            await runner.reap_children()
            tg.cancel_scope.cancel()
    assert not runner.failures, runner.failures
    return summary


def _console(vm: DomU) -> str:
    try:
        return vm.console_log.read_text(errors="replace")[-8000:]
    except OSError as exc:
        return f"(no console log: {exc})"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_transport_contract_between_dom0_and_a_domu() -> None:
    from ringkit.xen import open_domain

    with DomU("conformance-peer", [sys.executable, PEER]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        progress(f"domU is domain {domid}")
        try:
            async with open_domain() as dom:
                summary = await drive(dom, domid)
                assert summary["failed"] == 0, summary
                assert not dom.leaks(), dom.leaks()
            outcome = await vm.wait_async(REPLY_SECONDS)
            progress(f"domU exit status {outcome.exit_code}")
        except BaseException as exc:
            progress(f"failed: {exc!r}")
            print("--- the domU's console ---\n" + _console(vm), flush=True)
            raise
    assert outcome.exit_code == 0, outcome.output
    assert f"peer: {summary['steps']} steps, 0 failed" in outcome.output, outcome.output
    assert "peer: no leaks" in outcome.output, outcome.output


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_domu_with_unrestricted_privcmd_sees_its_peer_leave() -> None:
    """Linux (since XSA-482) blocks privcmd's hypercalls in a domU, which is why the domU above
    cannot see dom0's end of a channel close; with the restriction lifted at boot, it does."""
    from ringkit.xen import open_domain

    with DomU("conformance-unrestricted", [sys.executable, PEER],
              kernel_args=["xen_privcmd.unrestricted=1"]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        progress(f"domU (privcmd unrestricted) is domain {domid}")
        try:
            async with open_domain() as dom:
                summary = await drive(dom, domid, (events, peer_gone), domu_detects=True)
                assert summary["failed"] == 0, summary
            outcome = await vm.wait_async(REPLY_SECONDS)
        except BaseException:
            print("--- the domU's console ---\n" + _console(vm), flush=True)
            raise
    assert outcome.exit_code == 0, outcome.output
