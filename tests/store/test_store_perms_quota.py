"""Permissions and quotas of the simulated xenstored, with the error strings Xen answers."""

from __future__ import annotations

import pytest
from xs_helpers import ClientFactory, next_event, no_event, serve_pair

from ringkit import StoreError
from ringkit.abc import Access, Permission
from ringkit.sim.xenstored import Quota, XenstoreServer
from ringkit.store import StoreClient

pytestmark = pytest.mark.anyio

N, R, W, B = Access.NONE, Access.READ, Access.WRITE, Access.BOTH


async def expect(code: str, awaitable: object) -> None:
    with pytest.raises(StoreError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code == code


async def test_owner_and_per_domain_access(server: XenstoreServer, connect: ClientFactory) -> None:
    for domid in (1, 2, 3, 4):
        server.introduce_domain(domid)
    async with connect(0) as dom0, connect(1) as d1, connect(2) as d2, connect(3) as d3:
        await dom0.write("/shared/node", "v")
        await dom0.set_perms("/shared", [Permission(0, R)])  # everyone may read the dir
        await dom0.set_perms(
            "/shared/node",
            [Permission(1, N), Permission(2, R), Permission(3, W)],
        )
        # owner (1): everything, including set_perms
        assert await d1.read("/shared/node") == "v"
        await d1.write("/shared/node", "by-owner")
        # r entry
        assert await d2.read("/shared/node") == "by-owner"
        await expect("EACCES", d2.write("/shared/node", "x"))
        await expect("EACCES", d2.set_perms("/shared/node", [Permission(2, B)]))
        # w entry: may write, may not read
        await d3.write("/shared/node", "by-3")
        await expect("EACCES", d3.read("/shared/node"))
        # not listed: the owner entry's access (n)
        async with connect(4) as d4:
            await expect("EACCES", d4.read("/shared/node"))
            await expect("EACCES", d4.rm("/shared/node"))
        # dom0 is privileged regardless
        assert await dom0.read("/shared/node") == "by-3"
        assert await dom0.get_perms("/shared/node") == [
            Permission(1, N),
            Permission(2, R),
            Permission(3, W),
        ]


async def test_both_and_default_access(server: XenstoreServer, connect: ClientFactory) -> None:
    server.introduce_domain(1)
    async with connect(0) as dom0, connect(1) as d1:
        await dom0.write("/open/x", "1")
        await dom0.set_perms("/open/x", [Permission(0, B)])  # others: both
        await d1.write("/open/x", "2")
        assert await d1.read("/open/x") == "2"
        await dom0.set_perms("/open/x", [Permission(0, B), Permission(1, N)])
        await expect("EACCES", d1.read("/open/x"))


async def test_children_inherit_perms_with_creator_as_owner(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(1)
    async with connect(0) as dom0, connect(1) as d1:
        await dom0.mkdir("/backend")
        await dom0.set_perms("/backend", [Permission(0, R), Permission(1, B)])
        await d1.write("/backend/vbd/0/state", "1")
        for path in ("/backend/vbd", "/backend/vbd/0", "/backend/vbd/0/state"):
            assert await dom0.get_perms(path) == [Permission(1, R), Permission(1, B)]
        # a privileged creator keeps the parent's list unchanged
        await dom0.write("/backend/by0", "x")
        assert await dom0.get_perms("/backend/by0") == [Permission(0, R), Permission(1, B)]


async def test_unprivileged_cannot_change_owner_eperm(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(1)
    async with connect(1) as d1:
        await d1.write("mine", "x")
        await d1.set_perms("mine", [Permission(1, N), Permission(2, R)])
        # EPERM is in Xen 4.17's xsd_errors[] and do_set_perms() returns it for this case.
        await expect("EPERM", d1.set_perms("mine", [Permission(2, N)]))


async def test_enoent_vs_eacces_leaks_nothing(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(1)
    async with connect(0) as dom0, connect(1) as d1:
        await dom0.write("/secret/inner", "x")  # n0: unreadable for d1
        await expect("EACCES", d1.read("/secret/missing"))
        await expect("EACCES", d1.read("/secret/inner"))
        await expect("EACCES", d1.write("/secret/new", "x"))
        await expect("EACCES", d1.write("/elsewhere", "x"))  # root is n0
        await expect("ENOENT", d1.read("missing-in-home"))  # own home is readable
        await expect("EACCES", d1.directory("/"))
        await expect("ENOENT", dom0.read("/secret/missing"))


async def test_watch_events_respect_read_permission(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(1)
    async with connect(0) as dom0, connect(1) as d1:
        await dom0.mkdir("/p")
        async with d1.watch("/p") as watch:
            assert await next_event(watch) == "/p"
            await dom0.write("/p/hidden/deeper", "x")  # neither node nor parent readable
            await no_event(watch, lambda: d1.exists("x"))
            await dom0.set_perms("/p", [Permission(0, R)])
            assert await next_event(watch) == "/p"  # permission changes fire too
            await dom0.write("/p/visible", "x")  # parent readable
            assert await next_event(watch) == "/p/visible"


async def test_node_size_quota_enospc(server: XenstoreServer, connect: ClientFactory) -> None:
    server.introduce_domain(1)
    async with connect(0) as dom0, connect(1) as d1:
        # 16 header + 8 per permission + value + children must stay within 2048 bytes.
        await d1.write("fits", b"x" * (2048 - 16 - 8))
        await expect("ENOSPC", d1.write("big", b"x" * 2048))
        await expect("ENOSPC", d1.write("fits", b"x" * (2048 - 16 - 8 + 1)))
        await dom0.write("/dom0-is-exempt", b"x" * 4000)


async def test_nodes_quota_enospc(connect: ClientFactory) -> None:
    server = XenstoreServer(Quota(nodes=6))
    server.introduce_domain(1)  # home and home/domid are owned by domain 1: two nodes

    async with serve_pair(server, 1) as (stream, _tg), StoreClient(stream) as d1:
        await d1.write("a/b", "1")  # 4
        await d1.write("c", "1")  # 5
        await d1.write("d", "1")  # 6
        await expect("ENOSPC", d1.write("e", "1"))
        await expect("ENOSPC", d1.mkdir("f"))
        await d1.rm("a")
        await d1.write("e", "1")


async def test_watch_quota_e2big(server: XenstoreServer, connect: ClientFactory) -> None:
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    server.introduce_domain(1)
    async with connect(1) as d1:
        for i in range(128):
            await d1.request(SockmsgType.WATCH, join_strings(f"w{i}", f"tok{i}"))
        await expect("E2BIG", d1.request(SockmsgType.WATCH, join_strings("w", "one-too-many")))
        assert server.watch_count(1) == 128
    async with connect(0) as dom0:
        for i in range(200):
            await dom0.request(SockmsgType.WATCH, join_strings(f"/w{i}", f"tok{i}"))


async def test_transaction_quota_enospc(server: XenstoreServer, connect: ClientFactory) -> None:
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    server.introduce_domain(1)
    async with connect(1) as d1:
        ids = [
            await d1.request(SockmsgType.TRANSACTION_START, join_strings("")) for _ in range(10)
        ]
        assert len(set(ids)) == 10
        await expect("ENOSPC", d1.request(SockmsgType.TRANSACTION_START, join_strings("")))
        tx_id = int(ids[0].rstrip(b"\0"))
        await d1.request(SockmsgType.TRANSACTION_END, join_strings("F"), tx_id)
        await d1.request(SockmsgType.TRANSACTION_START, join_strings(""))


async def test_permission_count_quota_and_bad_perms(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    server.introduce_domain(1)
    async with connect(1) as d1:
        await d1.write("n", "")
        await d1.set_perms("n", [Permission(1, N)] + [Permission(i, R) for i in range(2, 6)])
        await expect(
            "ENOSPC",
            d1.set_perms("n", [Permission(1, N)] + [Permission(i, R) for i in range(2, 7)]),
        )
        for bad in ("x1", "r", "rabc", "r-1"):
            await expect(
                "EINVAL",
                d1.request(SockmsgType.SET_PERMS, join_strings("n", bad)),
            )
        await expect("EINVAL", d1.request(SockmsgType.SET_PERMS, join_strings("n")))


async def test_unprivileged_path_length_limit(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(1)
    async with connect(1) as d1:
        long_path = "/".join(["x" * 99] * 20) + "/" + "y" * 48
        assert len(long_path) == 2048  # XENSTORE_REL_PATH_MAX below the home is allowed
        await d1.write(long_path, "ok")
        await expect("EINVAL", d1.write(long_path + "z", "too long"))
        # A single child name that long would overflow its parent's node size instead.
        await expect("ENOSPC", d1.write("a" * 2048, "x"))


async def test_quotas_count_per_domain_across_connections(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    server.introduce_domain(1)
    async with connect(1) as first, connect(1) as second:
        for _ in range(5):
            await first.request(SockmsgType.TRANSACTION_START, join_strings(""))
            await second.request(SockmsgType.TRANSACTION_START, join_strings(""))
        await expect("ENOSPC", second.request(SockmsgType.TRANSACTION_START, join_strings("")))
        for i in range(64):
            await first.request(SockmsgType.WATCH, join_strings(f"a{i}", "t"))
            await second.request(SockmsgType.WATCH, join_strings(f"b{i}", "t"))
        await expect("E2BIG", first.request(SockmsgType.WATCH, join_strings("c", "t")))
