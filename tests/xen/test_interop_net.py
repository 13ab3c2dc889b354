"""Interop of the netif pair with Linux's own drivers, one domU for both directions.

**A. Linux's xen-netfront in the domU <-> ringkit's `NetBackend` in dom0**, bridged to a TAP
device (``rknet0``, with IFF_VNET_HDR) that holds dom0's address.  dom0 plays the toolstack
(both ends' entries as ``xl network-attach`` writes them, with dom0's kernel backends kept off
the device), the domU finds the interface with the vif's MAC and pings dom0, dom0 pings the
domU, and one TCP connection carries random bytes both ways, each direction checked by SHA-256
at both ends (`net_exchange`).  Then dom0 detaches the vif as ``xl network-detach`` does.

**B. ringkit's `NetFrontend` in the domU <-> Linux's xen-netback in dom0.**  The domU switches
its frontend autoprobe off (Linux's netfront must leave vif 1 alone) and runs ``ringkit net
attach --tap``; dom0 loads xen-netback, plugs vif 1 (writing ``hotplug-status`` = connected,
the hotplug script's part), gives ``vif<domid>.1`` an address, and the same pings and
exchange follow.

The tests/xen/net_guest.py program is the domU's half.  Runs in dom0 under ``ringkit xen-vm
run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from _harness import DOMU_TEST, kernel_backends_off
from net_exchange import Report, exchange, mismatches
from ringkit.backends.net import NetBackend
from ringkit.backends.net.tap import TapDevice

from ringkit import StoreError
from ringkit.abc import Domain, Store
from ringkit.device import DeviceAddress, create_device, destroy_device
from ringkit.xenvm.toolstack import detach_device, plug_linux_vif, vif_nodes

pytestmark = DOMU_TEST

GUEST = Path(__file__).with_name("net_guest.py")
STEP_SECONDS = 300
BYTES = 4 << 20                     # each way, in each part
PORT = 5201
MAC_A, MAC_B = "00:16:3e:20:0a:01", "00:16:3e:20:0b:01"
HOST_A, GUEST_A = "10.20.1.1", "10.20.1.2"
HOST_B, GUEST_B = "10.20.2.1", "10.20.2.2"
TAP_A = "rknet0"


def say(message: str) -> None:
    print(f"net interop: {message}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=STEP_SECONDS)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def ping(address: str) -> str:
    proc = sh("ping", "-c", "3", "-W", "10", address, check=False)
    lines = [line for line in proc.stdout.splitlines() if "packet loss" in line]
    return f"rc={proc.returncode} {lines[-1] if lines else proc.stdout + proc.stderr}"


def all_answered(summary: str | None) -> bool:
    """A ping summary (ours or the guest's busybox's) with every echo answered."""
    return bool(summary) and summary.startswith("rc=0 ") and " 0% packet loss" in summary


async def guest_key(store: Store, vm: Any, key: str, *, want: str | None = None) -> str:
    """The domU's ``data/<key>`` once present (and equal to `want`, if given); if the domU
    ends or stalls first, fail with its output."""
    home = f"/local/domain/{vm.domid}/data"
    with anyio.move_on_after(STEP_SECONDS):
        while True:
            try:
                value = await store.read(f"{home}/{key}")
                if want is None or value == want:
                    return value
            except StoreError:
                pass
            if await store.exists(f"{home}/ringkit-exit"):
                # the domU may have written the key and ended between the two reads
                with suppress(StoreError):
                    value = await store.read(f"{home}/{key}")
                    if want is None or value == want:
                        return value
                break
            await anyio.sleep(0.5)
    outcome = await vm.wait_async(30)
    pytest.fail(f"the domU never wrote {key}{'=' + want if want else ''} "
                f"(exit {outcome.exit_code}):\n{outcome.output}")


async def check_part(store: Store, vm: Any, part: str, host: str, guest: str,
                     device: str, extra: Any = None) -> dict[str, Any]:
    """The guest's ping, dom0's ping, the exchange; returns what each saw.  `device`: dom0's
    interface (its counters go into a failure's message, with `extra()`)."""
    await guest_key(store, vm, "net-phase", want=f"{part}-listening")
    guest_ping = await store.read(f"/local/domain/{vm.domid}/data/net-{part}-ping")
    host_ping = await anyio.to_thread.run_sync(ping, guest)
    say(f"part {part}: the guest's ping: {guest_ping}; dom0's: {host_ping}")
    payload = secrets.token_bytes(BYTES)
    try:
        ours = await anyio.to_thread.run_sync(exchange, (guest, PORT), payload, STEP_SECONDS)
    except OSError as exc:
        counters = sh("ip", "-s", "link", "show", device, check=False).stdout
        # Xen's view of the grants (into xl dmesg, which the harness keeps): which of the
        # guest's grants dom0 still has mapped
        sh("xl", "debug-keys", "g", check=False)
        guest_counters = await _guest_optional(store, vm, f"net-{part}-counters")
        pytest.fail(f"part {part}: the TCP exchange failed: {exc!r}; the guest's ping "
                    f"{guest_ping}, dom0's {host_ping}; dom0's {device}: {counters}; the "
                    f"guest's interface: {guest_counters}; {extra() if extra else ''}")
    theirs = Report.from_json(await guest_key(store, vm, f"net-{part}-report"))
    result = {"guest_ping": guest_ping, "host_ping": host_ping,
              "mismatches": mismatches(ours, theirs), "client": ours, "server": theirs}
    say(f"part {part}: {result}")
    return result


async def part_a(dom: Domain, vm: Any) -> tuple[dict[str, Any], NetBackend]:
    address = DeviceAddress("vif", vm.domid, dom.domid, 0)
    front, back = vif_nodes(MAC_A, 0)
    tap = TapDevice.open(TAP_A, vnet_hdr=True)
    try:
        sh("ip", "addr", "add", f"{HOST_A}/24", "dev", tap.name)
        sh("ip", "link", "set", tap.name, "up")
        await create_device(dom.store, address, frontend_nodes=front, backend_nodes=back)
        try:
            async with anyio.create_task_group() as tg, \
                    NetBackend(dom, vm.domid, 0, link=tap) as backend:
                tg.start_soon(backend.run)
                result = await check_part(dom.store, vm, "a", HOST_A, GUEST_A, tap.name,
                                          lambda: f"ringkit's backend: {backend.stats}")
                # (event-channel, or event-channel-tx/-rx: the backend offers split ones)
                result["frontend"] = {
                    key: await _state(dom.store, f"{address.frontend_path}/{key}", "")
                    for key in ("request-rx-copy", "feature-rx-notify", "feature-sg",
                                "feature-gso-tcpv4", "tx-ring-ref", "rx-ring-ref",
                                "event-channel", "event-channel-tx", "event-channel-rx")}
                await guest_key(dom.store, vm, "net-phase", want="a-done")
                with anyio.fail_after(STEP_SECONDS):
                    await detach_device(dom.store, address)
                    await backend.wait_finished()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await destroy_device(dom.store, address)
    finally:
        await tap.aclose()
    return result, backend


async def _guest_optional(store: Store, vm: Any, key: str) -> str | None:
    return await _state(store, f"/local/domain/{vm.domid}/data/{key}", "")


async def _state(store: Store, path: str, leaf: str = "/state") -> str | None:
    try:
        return await store.read(f"{path}{leaf}")
    except StoreError:
        return None


async def part_b(dom: Domain, vm: Any) -> dict[str, Any]:
    address = DeviceAddress("vif", vm.domid, dom.domid, 1)
    try:
        vif = await plug_linux_vif(dom.store, address, MAC_B, timeout=STEP_SECONDS)
        sh("ip", "addr", "add", f"{HOST_B}/24", "dev", vif)
        sh("ip", "link", "set", vif, "up")
        result = await check_part(dom.store, vm, "b", HOST_B, GUEST_B, vif)
        await guest_key(dom.store, vm, "net-phase", want="b-done")
        result["attach_exit"] = await dom.store.read(
            f"/local/domain/{vm.domid}/data/net-b-attach-exit")
        result["states_after"] = [await _state(dom.store, path)
                                  for path in (address.frontend_path, address.backend_path)]
    finally:
        await destroy_device(dom.store, address)
    return result


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_linux_netfront_and_netback_against_ringkit() -> None:
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    sh("busybox", "modprobe", "tun")
    env = {"NET_A_MAC": MAC_A, "NET_A_GUEST": GUEST_A, "NET_A_HOST": HOST_A,
           "NET_B_MAC": MAC_B, "NET_B_GUEST": GUEST_B, "NET_B_HOST": HOST_B,
           "NET_BYTES": str(BYTES)}
    async with open_domain() as dom:
        with DomU("net", [sys.executable, str(GUEST)], env=env,
                  modules=["xen_netfront", "tun"]) as vm:
            await anyio.to_thread.run_sync(vm.start)
            say(f"domU {vm.domid} started")
            with kernel_backends_off():
                a, backend = await part_a(dom, vm)
            sh("busybox", "modprobe", "xen_netback")
            b = await part_b(dom, vm)
            outcome = await vm.wait_async(STEP_SECONDS)
        assert not dom.leaks(), dom.leaks()
    print(f"\npart A (Linux netfront <-> ringkit netback): {a}\n"
          f"  backend stats: {backend.stats}\n"
          f"part B (ringkit netfront <-> Linux netback): {b}")
    print("\n".join(line for line in outcome.output.splitlines() if line.startswith("guest:")))
    assert outcome.exit_code == 0, outcome.output
    # A: both pings answered in full, both directions of the exchange intact, through
    # ringkit's backend (it moved the frames, and refused none)
    assert all_answered(a["guest_ping"]) and all_answered(a["host_ping"]), a
    assert not a["mismatches"], a["mismatches"]
    assert a["client"].got.length == a["client"].sent.length == BYTES, a
    assert a["frontend"]["request-rx-copy"] == "1", a["frontend"]
    # Linux's netfront took what ringkit's backend offered: split event channels and GSO,
    # and GSO frames crossed both rings (a frame up to 64 KiB: fewer packets than bytes/MTU)
    front = a["frontend"]
    assert front["event-channel-tx"] and front["event-channel-rx"], front
    assert front["event-channel"] is None, front
    assert front["feature-gso-tcpv4"] == "1", front
    stats = backend.stats
    assert stats.tx_gso > 0 and stats.rx_gso > 0, stats
    assert stats.tx_packets > BYTES // 65536 and stats.rx_packets > BYTES // 65536, stats
    assert stats.tx_refused == 0, stats
    # B: the same through Linux's netback and ringkit's frontend, which then closed cleanly
    assert all_answered(b["guest_ping"]) and all_answered(b["host_ping"]), b
    assert not b["mismatches"], b["mismatches"]
    assert b["client"].got.length == b["client"].sent.length == BYTES, b
    assert b["attach_exit"] == "0", b
