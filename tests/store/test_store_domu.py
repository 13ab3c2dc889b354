"""What Xen's xenstored answers an unprivileged domain: quotas, permissions, error strings.

Runs in dom0 under ``ringkit xen-vm run --domu``: it starts a PV domU that runs this file as a
probe (``python tests/store/test_store_domu.py probe``), which talks to the real xenstored
through the domU's /dev/xen/xenbus with ringkit's client and reports what it was answered.  The
test then checks that the simulated xenstored answers the same things.  Skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest

from ringkit import StoreError
from ringkit.abc import Access, Permission
from ringkit.store import StoreClient

PROBE_MARK = "H3-XENSTORE-PROBE "
STEP_SECONDS = 900


async def _code(awaitable: object) -> str:
    try:
        await awaitable  # type: ignore[misc]
    except StoreError as exc:
        return exc.code
    return "OK"


async def probe(store: StoreClient) -> dict[str, object]:
    """Ask the store the questions whose answers we want to compare (run as an unprivileged
    domain, relative paths under its writable ``data`` directory)."""
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    out: dict[str, object] = {}
    home = await store.get_domain_path(int(await store.read("domid")))
    # Largest value a node may hold, and the answer just above it.
    low, high = 1000, 4000
    while high - low > 1:
        mid = (low + high) // 2
        if await _code(store.write("data/size", b"x" * mid)) == "OK":
            low = mid
        else:
            high = mid
    out["max_value"] = low
    out["value_over"] = await _code(store.write("data/size", b"x" * high))
    await store.rm("data/size")
    out["read_n0"] = await _code(store.read("/h3test/secret"))
    out["read_missing_under_n0"] = await _code(store.read("/h3test/secret/missing"))
    out["read_missing_own"] = await _code(store.read("data/missing"))
    out["write_r0"] = await _code(store.write("/h3test/public/x", "1"))
    out["read_r0"] = await _code(store.read("/h3test/public"))
    await store.write("data/mine", "1")
    out["mine_perms"] = [p.to_wire() for p in await store.get_perms("data/mine")]
    out["change_owner"] = await _code(store.set_perms("data/mine", [Permission(0, Access.NONE)]))
    domid = int(home.rsplit("/", 1)[1])
    six = [Permission(domid, Access.NONE)] + [Permission(i, Access.READ) for i in range(1, 6)]
    out["six_perms"] = await _code(store.set_perms("data/mine", six))
    out["five_perms"] = await _code(store.set_perms("data/mine", six[:5]))
    out["introduce"] = await _code(store.introduce_domain(99))
    out["get_perms_special"] = await _code(store.get_perms("@releaseDomain"))
    long_path = "/".join(["x" * 99] * 20) + "/" + "y" * 48  # 2048 chars
    out["path_2048"] = await _code(store.write(f"data/{long_path[5:]}", "1"))
    out["path_2049"] = await _code(store.write(f"data/{long_path[5:]}z", "1"))
    await store.rm("data/" + "x" * 94)
    # Transactions open at once.
    ids = []
    code = "OK"
    for _ in range(20):
        try:
            ids.append(await store.request(SockmsgType.TRANSACTION_START, join_strings("")))
        except StoreError as exc:
            code = exc.code
            break
    out["transactions"] = [len(ids), code]
    for raw in ids:
        await store.request(SockmsgType.TRANSACTION_END, join_strings("F"), int(raw[:-1]))
    # Watches registered at once (the kernel holds some of the domain's own).
    count, code = 0, "OK"
    for i in range(200):
        try:
            await store.request(SockmsgType.WATCH, join_strings(f"data/w{i}", f"t{i}"))
        except StoreError as exc:
            code = exc.code
            break
        count += 1
    out["watches"] = [count, code]
    for i in range(count):
        await store.request(SockmsgType.UNWATCH, join_strings(f"data/w{i}", f"t{i}"))
    # Nodes owned by the domain.
    count, code = 0, "OK"
    for i in range(1100):
        try:
            await store.write(f"data/n/{i // 50}/{i % 50}", "")  # small directories
        except StoreError as exc:
            code = exc.code
            break
        count += 1
    out["nodes"] = [count, code]
    await store.rm("data/n")
    return out


async def _probe_main() -> None:
    from ringkit.store import connect_xenbus

    async with connect_xenbus() as store:
        print(PROBE_MARK + json.dumps(await probe(store)), flush=True)


@pytest.mark.xen
@pytest.mark.skipif(
    not os.path.exists("/dev/xen/xenbus") or not os.environ.get("RINGKIT_XEN_VM_DOMU_IMAGE"),
    reason="needs real Xen with the harness's domU support (ringkit xen-vm run --domu)",
)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_unprivileged_answers_match_the_simulator() -> None:
    from xs_helpers import serve_pair

    from ringkit.sim.xenstored import XenstoreServer
    from ringkit.store import open_store
    from ringkit.xenvm.domu import DomU

    async with await open_store() as dom0:
        await dom0.write("/h3test/secret/inner", "x")  # n0
        await dom0.write("/h3test/public", "p")
        await dom0.set_perms("/h3test/public", [Permission(0, Access.READ)])
    script = os.path.abspath(__file__)
    with DomU("h3-xenstore", [sys.executable, script, "probe"], cwd=os.getcwd()) as vm:
        await anyio.to_thread.run_sync(vm.start)
        outcome = await vm.wait_async(STEP_SECONDS)
    assert outcome.exit_code == 0, outcome.output
    line = next(x for x in outcome.output.splitlines() if x.startswith(PROBE_MARK))
    real = json.loads(line[len(PROBE_MARK) :])
    print("real xenstored answered:", real)

    # The same probe against the simulator, as an unprivileged domain with a data directory
    # like the one libxl gives a guest.
    server = XenstoreServer()
    server.introduce_domain(5)
    async with serve_pair(server, 0) as (stream0, _tg0), StoreClient(stream0) as sim0:
        await sim0.write("/local/domain/5/data", "")
        await sim0.set_perms("/local/domain/5/data", [Permission(5, Access.NONE)])
        await sim0.write("/h3test/secret/inner", "x")
        await sim0.write("/h3test/public", "p")
        await sim0.set_perms("/h3test/public", [Permission(0, Access.READ)])
        async with serve_pair(server, 5) as (stream, _tg), StoreClient(stream) as guest:
            simulated = await probe(guest)
    print("simulated xenstored answered:", simulated)
    for key in (
        "value_over",
        "read_n0",
        "read_missing_under_n0",
        "read_missing_own",
        "write_r0",
        "read_r0",
        "change_owner",
        "six_perms",
        "five_perms",
        "introduce",
        "path_2048",
        "path_2049",
    ):
        assert simulated[key] == real[key], key
    for key in ("transactions", "watches", "nodes"):
        assert simulated[key][1] == real[key][1], key  # type: ignore[index]


if __name__ == "__main__" and sys.argv[1:] == ["probe"]:
    anyio.run(_probe_main)
