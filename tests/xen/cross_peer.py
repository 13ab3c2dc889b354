"""One side of the cross-domain transport conformance steps (tests/xen/test_conformance_domu.py).

A `StepRunner` executes *steps* -- share, map, write, read, notify, wait, kill a child... -- on
its own `ringkit.xen` domain handle and judges each outcome against what the step says to
expect: equal bytes, equal fields, or the exact typed error.  The same runner class plays both
domains.  dom0's test holds one in-process and drives another one inside the domU through
xenstore, so each scenario is written once and run with either domain in either role.

The wire (`Mailbox`): the domU owns ``/local/domain/<domid>/data/rk-conf`` with two nodes.
dom0 writes one step at a time to ``cmd`` as JSON ``{"seq", "op", "args", "expect"}``; the domU
runs it and answers at ``reply`` with ``{"seq", "verdict", "result" | "error"}``.  Each side
watches the node it reads.  The domU creates both nodes itself, so it owns them and may read
dom0's writes.  Steps strictly alternate, so one node per direction is enough and nothing piles
up against the domU's xenstore quota.

The domU's verdict: every failed step prints a ``peer: FAIL`` line, and the exit status is 0 only
when every step passed and its handle held nothing after the last one.

    python tests/xen/cross_peer.py          # the domU's program (started by the test)
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ringkit import (
    ConfigError,
    EventChannelError,
    GrantError,
    PeerGoneError,
    ResourceLimitError,
    StoreError,
)
from ringkit.abc import PAGE_SIZE, Domain, EventChannel, MappedPages, SharedPages, Store

EVENT_SECONDS = 120.0
"""Bound on a wait that must return (generous: TCG on a shared machine)."""
SPAWN_SECONDS = 300.0
"""Bound on a child process's start: a fresh Python importing ringkit under TCG is slow."""
IDLE_SECONDS = 900.0
"""How long the domU waits for dom0's next step before it gives up."""
QUIET = 0.5
"""How long a wait that must not return is given to (wrongly) return."""
RECHECK = 1.0
"""A mailbox re-reads its node this often even without a watch event (belt and braces)."""

CHILD = str(Path(__file__).with_name("cross_child.py"))
"""The process to kill -9: shares a page and maps one, each with an unmap-notify."""

ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (GrantError, EventChannelError, PeerGoneError, ResourceLimitError, ConfigError,
                TypeError, anyio.ClosedResourceError)
}
"""The error types a step may expect, by name (the wire carries names)."""

Json = dict[str, Any]


def page_digest(values: list[int]) -> str:
    """The sha256 of pages filled with one byte value each (what `fill` writes)."""
    return hashlib.sha256(b"".join(bytes([v]) * PAGE_SIZE for v in values)).hexdigest()


# --------------------------------------------------------------------------- the wire


class Mailbox:
    """Strictly alternating JSON messages over two xenstore nodes (see the module docstring)."""

    def __init__(self, store: Store, inbox: str, outbox: str, watch: AsyncIterator[str]) -> None:
        self._store = store
        self._inbox = inbox
        self._outbox = outbox
        self._watch = watch

    @classmethod
    @asynccontextmanager
    async def open(cls, store: Store, inbox: str, outbox: str) -> AsyncIterator[Mailbox]:
        """Watch `inbox` for the life of the context; write to `outbox`."""
        async with store.watch(inbox) as watch:
            yield cls(store, inbox, outbox, aiter(watch))

    async def send(self, message: Json) -> None:
        await self._store.write(self._outbox, json.dumps(message, separators=(",", ":")))

    async def _read(self) -> Json | None:
        try:
            text = await self._store.read(self._inbox)
        except StoreError as exc:
            if exc.code in ("ENOENT", "EACCES"):  # not written (or not opened to us) yet
                return None
            raise
        message = json.loads(text) if text else None
        if message is not None and not isinstance(message, dict):
            raise AssertionError(f"{self._inbox} holds {text!r}, not a JSON object")
        return message

    async def receive(self, seq: int, timeout: float,
                      check: Callable[[], Awaitable[None]] | None = None) -> Json:
        """The message numbered `seq` (older ones are ignored), within `timeout` seconds.

        `check` runs whenever the inbox stayed unchanged for `RECHECK` seconds; it raises to
        give up early (the sender is known to be gone).
        """
        with anyio.fail_after(timeout):
            while True:
                message = await self._read()
                if message is not None and message.get("seq") == seq:
                    return message
                with anyio.move_on_after(RECHECK) as idle:
                    await anext(self._watch)
                if idle.cancelled_caught and check is not None:
                    await check()


# --------------------------------------------------------------------------- the steps


@dataclass
class _BackgroundWait:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


async def read_until_ready(stdout: anyio.abc.ByteReceiveStream, seconds: float) -> list[str]:
    """The lines a child process prints before its "ready" line (within `seconds`)."""
    lines: list[str] = []
    buffered = b""
    with anyio.fail_after(seconds):
        while "ready" not in lines:
            buffered += await stdout.receive()
            *done, buffered = buffered.split(b"\n")
            lines.extend(line.decode() for line in done)
    return lines[:lines.index("ready")]


class StepRunner:
    """Runs steps on `dom`; background waits run in `task_group`.

    Pages and channels share one namespace, named by whoever drives the steps; a closed object
    keeps its name (so that a second close can be checked) until a new one takes it.
    """

    def __init__(self, who: str, dom: Domain, task_group: anyio.abc.TaskGroup) -> None:
        self.who = who
        self.dom = dom
        self._tg = task_group
        self.objects: dict[str, SharedPages | MappedPages | EventChannel] = {}
        self._waits: dict[str, _BackgroundWait] = {}
        self._children: dict[str, anyio.abc.Process] = {}
        self.steps = 0
        self.failures: list[str] = []

    # ---------------------------------------------------------- judging

    async def execute(self, message: Json) -> Json:
        """Run one step message; return the reply (with its verdict)."""
        op, args, expect = message["op"], message.get("args") or {}, message.get("expect") or {}
        self.steps += 1
        reply: Json = {"seq": message.get("seq")}
        error: BaseException | None = None
        try:
            method = getattr(self, f"op_{op}", None)
            if method is None:
                raise AssertionError(f"no such step: {op!r}")
            result = await method(**args)
            reply["result"] = result
        except Exception as exc:
            error = exc
            reply["error"] = {"type": type(exc).__name__, "errno": getattr(exc, "errno", None),
                              "message": str(exc)[:500]}
        verdict = self._judge(expect, reply.get("result"), error)
        reply["verdict"] = verdict
        if verdict != "pass":
            line = f"{self.who}: FAIL step {self.steps} {op}({args}): {verdict}"
            self.failures.append(line)
            print(line, flush=True)
        return reply

    @staticmethod
    def _judge(expect: Json, result: Json | None, error: BaseException | None) -> str:
        raises = expect.get("raises")
        if raises is not None:
            wanted = ERRORS[raises]
            if error is None:
                return f"expected {raises}, it succeeded with {result}"
            if not isinstance(error, wanted):
                return f"expected {raises}, got {type(error).__name__}: {error}"
            if expect.get("errno") and getattr(error, "errno", None) is None:
                return f"{raises} without an errno: {error}"
            return "pass"
        if error is not None:
            return f"raised {type(error).__name__}: {error}"
        for key, value in (expect.get("result") or {}).items():
            got = (result or {}).get(key)
            if got != value:
                return f"{key} is {got!r}, expected {value!r}"
        return "pass"

    # ---------------------------------------------------------- grants

    def _pages(self, name: str) -> SharedPages | MappedPages:
        pages = self.objects[name]
        assert isinstance(pages, SharedPages | MappedPages), f"{name} names {pages!r}"
        return pages

    def _channel(self, name: str) -> EventChannel:
        channel = self.objects[name]
        assert isinstance(channel, EventChannel), f"{name} names {channel!r}"
        return channel

    def _buffer(self, name: str) -> memoryview:
        return self._pages(name).buffer

    async def op_share(self, name: str, peer: int, count: int = 1, writable: bool = True) -> Json:
        pages = await self.dom.grants.share(peer, count, writable=writable)
        self.objects[name] = pages
        buf = pages.buffer
        return {"refs": list(pages.refs), "len": len(buf), "writable": pages.writable,
                "peer": pages.peer, "zeroed": bytes(buf) == bytes(len(buf))}

    async def op_map(self, name: str, peer: int, refs: list[int], writable: bool = True) -> Json:
        pages = await self.dom.grants.map(peer, refs, writable=writable)
        self.objects[name] = pages
        return {"len": len(pages.buffer), "writable": pages.writable, "peer": pages.peer,
                "readonly": pages.buffer.readonly, "refs": list(pages.refs)}

    async def op_write(self, name: str, offset: int, data: str) -> Json:
        raw = bytes.fromhex(data)
        self._buffer(name)[offset:offset + len(raw)] = raw
        return {}

    async def op_read(self, name: str, offset: int, length: int) -> Json:
        return {"data": bytes(self._buffer(name)[offset:offset + length]).hex()}

    async def op_fill(self, name: str, values: list[int]) -> Json:
        buf = self._buffer(name)
        for page, value in enumerate(values):
            buf[page * PAGE_SIZE:(page + 1) * PAGE_SIZE] = bytes([value]) * PAGE_SIZE
        return {}

    async def op_digest(self, name: str) -> Json:
        buf = self._buffer(name)
        return {"sha256": hashlib.sha256(buf).hexdigest(), "len": len(buf)}

    async def op_marks(self, name: str, offset: int) -> Json:
        """The byte at `offset` of every page (shows the order pages were mapped in)."""
        buf = self._buffer(name)
        return {"marks": [buf[page * PAGE_SIZE + offset] for page in range(len(buf) // PAGE_SIZE)]}

    async def op_set_unmap_notify(self, name: str, offset: int | None = None,
                                  channel: str | None = None) -> Json:
        port = self._channel(channel).port if channel is not None else None
        self._pages(name).set_unmap_notify(offset=offset, port=port)
        return {}

    async def op_close(self, name: str) -> Json:
        await self.objects[name].aclose()
        return {}

    # ---------------------------------------------------------- event channels

    async def op_alloc_unbound(self, name: str, remote: int) -> Json:
        channel = await self.dom.events.alloc_unbound(remote)
        self.objects[name] = channel
        return {"port": channel.port, "remote": channel.remote_domid}

    async def op_bind(self, name: str, remote: int, port: int) -> Json:
        channel = await self.dom.events.bind_interdomain(remote, port)
        self.objects[name] = channel
        return {"port": channel.port, "remote": channel.remote_domid}

    async def op_notify(self, name: str, times: int = 1) -> Json:
        channel = self._channel(name)
        for _ in range(times):
            channel.notify()
        return {}

    async def op_wait(self, name: str) -> Json:
        with anyio.fail_after(EVENT_SECONDS):
            await self._channel(name).wait()
        return {}

    async def op_quiet(self, name: str) -> Json:
        """Whether no event arrives for `QUIET` seconds."""
        with anyio.move_on_after(QUIET):
            await self._channel(name).wait()
            return {"quiet": False}
        return {"quiet": True}

    async def op_drain(self, name: str, limit: int) -> Json:
        """Take every wake-up still on its way (until `QUIET` seconds pass without one, or
        `limit` came): how many there were."""
        channel = self._channel(name)
        wakeups = 0
        while wakeups < limit:
            with anyio.move_on_after(QUIET):
                await channel.wait()
                wakeups += 1
                continue
            break
        return {"wakeups": wakeups}

    async def op_detects_peer_close(self) -> Json:
        """Whether this transport can tell that a channel's remote end closed.  The real one
        asks Xen (EVTCHNOP_status through privcmd), which a domU's kernel may block (Linux
        does, since XSA-482, unless booted with xen_privcmd.unrestricted=1); the simulator
        always knows."""
        port_status = getattr(self.dom.events, "port_status", None)
        if port_status is None:
            return {"detects": True}
        probe = await self.dom.events.alloc_unbound(self.dom.domid)
        try:
            return {"detects": port_status(probe.port) is not None}
        finally:
            await probe.aclose()

    async def op_wait_start(self, name: str) -> Json:
        """Start a wait in the background; answer once it sleeps (blocked: True) or ended."""
        box = self._waits[name] = _BackgroundWait()
        channel = self._channel(name)

        async def waiter() -> None:
            try:
                with anyio.fail_after(EVENT_SECONDS):
                    await channel.wait()
            except Exception as exc:
                box.error = exc
            finally:
                box.done.set()

        self._tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        return {"blocked": not box.done.is_set()}

    async def op_wait_join(self, name: str) -> Json:
        """The outcome of the background wait: returns, or raises what the wait raised."""
        box = self._waits.pop(name)
        with anyio.fail_after(EVENT_SECONDS + 10):
            await box.done.wait()
        if box.error is not None:
            raise box.error
        return {}

    # ---------------------------------------------------------- child processes

    async def op_spawn(self, name: str, args: list[str | int]) -> Json:
        """Start cross_child.py with `args`; answer with what it printed before "ready"."""
        proc = await anyio.open_process([sys.executable, CHILD, *map(str, args)],
                                        stdout=subprocess.PIPE)
        self._children[name] = proc
        assert proc.stdout is not None
        return {"lines": await read_until_ready(proc.stdout, SPAWN_SECONDS)}

    async def op_kill(self, name: str) -> Json:
        """kill -9 the child and reap it."""
        proc = self._children.pop(name)
        proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(EVENT_SECONDS):
            code = await proc.wait()
        await proc.aclose()
        return {"returncode": code}

    async def reap_children(self) -> None:
        """Kill whatever child is left (after a failure), so none keeps grants alive."""
        with anyio.CancelScope(shield=True):
            for proc in self._children.values():
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                await proc.aclose()
            self._children.clear()

    # ---------------------------------------------------------- accounting

    async def op_leaks(self) -> Json:
        return asdict(self.dom.leaks())


# --------------------------------------------------------------------------- the domU


async def obey(dom: Domain) -> int:
    """Obey dom0's steps on `dom` until "finish"; return the exit status (the verdict)."""
    conf = f"/local/domain/{dom.domid}/data/rk-conf"
    await dom.store.write(f"{conf}/cmd", "")     # ours, so that we may read what dom0 writes
    await dom.store.write(f"{conf}/reply", "")
    async with Mailbox.open(dom.store, f"{conf}/cmd", f"{conf}/reply") as mailbox, \
            anyio.create_task_group() as tg:
        runner = StepRunner("peer", dom, tg)
        await mailbox.send({"seq": 0, "verdict": "pass", "result": {"domid": dom.domid}})
        print(f"peer: domain {dom.domid} ready for steps", flush=True)
        t0 = time.monotonic()
        seq = 1
        try:
            while True:
                message = await mailbox.receive(seq, IDLE_SECONDS)
                if message.get("op") == "finish":
                    await mailbox.send({"seq": seq, "verdict": "pass", "result": {
                        "steps": runner.steps, "failed": len(runner.failures)}})
                    break
                reply = await runner.execute(message)
                await mailbox.send(reply)
                print(f"peer +{time.monotonic() - t0:.1f}s: step {seq} {message.get('op')} "
                      f"{reply['verdict'][:60]}", flush=True)
                seq += 1
        finally:
            await runner.reap_children()
            tg.cancel_scope.cancel()
    leaks = dom.leaks()
    print(f"peer: {runner.steps} steps, {len(runner.failures)} failed", flush=True)
    print(f"peer: leaks {leaks}" if leaks else "peer: no leaks", flush=True)
    return 1 if runner.failures else 2 if leaks else 0


async def serve() -> int:
    """The domU's program: `obey` on this domain's real transport."""
    from ringkit.xen import open_domain

    async with open_domain() as dom:
        return await obey(dom)


if __name__ == "__main__":
    sys.exit(anyio.run(serve))
