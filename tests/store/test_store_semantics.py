"""Client <-> simulated xenstored: basic node operations, watches, transactions, domains."""

from __future__ import annotations

import anyio
import pytest
from xs_helpers import ClientFactory, next_event, no_event

from ringkit import StoreError
from ringkit.abc import Access, Permission, Transaction
from ringkit.sim.xenstored import XenstoreServer

pytestmark = pytest.mark.anyio


async def test_read_write_mkdir_rm_directory(connect: ClientFactory) -> None:
    async with connect(0) as store:
        await store.write("/test/a/b", "hello")
        assert await store.read("/test/a/b") == "hello"
        assert await store.read("/test/a") == ""  # parents created empty
        await store.write("/test/a/c", b"\x00\xffbinary")
        assert await store.read_bytes("/test/a/c") == b"\x00\xffbinary"
        assert await store.directory("/test/a") == ["b", "c"]
        await store.mkdir("/test/empty")
        await store.mkdir("/test/empty")  # exists: fine
        assert await store.directory("/test/empty") == []
        await store.rm("/test/a")
        assert not await store.exists("/test/a/b")
        assert await store.directory("/test") == ["empty"]
        await store.rm("/test/nonexistent")  # parent exists: fine
        with pytest.raises(StoreError) as info:
            await store.rm("/nope/deeper")
        assert info.value.code == "ENOENT"
        with pytest.raises(StoreError) as info:
            await store.read("/nope")
        assert info.value.code == "ENOENT"
        assert info.value.path == "/nope"


async def test_invalid_paths(connect: ClientFactory) -> None:
    async with connect(0) as store:
        for bad in ("/a//b", "/a/", "/a b", "@releaseDomain", ""):
            with pytest.raises(StoreError) as info:
                await store.read(bad)
            assert info.value.code == "EINVAL", bad
        with pytest.raises(StoreError) as info:
            await store.rm("/")
        assert info.value.code == "EINVAL"


async def test_initial_tree_and_domain_path(connect: ClientFactory) -> None:
    async with connect(0) as store:
        assert await store.get_domain_path(7) == "/local/domain/7"
        assert await store.read("/local/domain/0/name") == "Domain-0"
        assert "tool" in await store.directory("/")
        assert await store.get_perms("@releaseDomain") == [Permission(0, Access.NONE)]


async def test_relative_paths_resolve_to_home(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(3)
    async with connect(3) as store:
        await store.write("data/x", "1")
        assert await store.read("/local/domain/3/data/x") == "1"
        assert await store.directory("data") == ["x"]


async def test_watch_initial_event_descendants_and_unwatch(connect: ClientFactory) -> None:
    async with connect(0) as watcher, connect(0) as writer:
        async with watcher.watch("/w") as watch:
            assert await next_event(watch) == "/w"  # fired once at registration
            await writer.write("/w/a/b", "1")
            assert await next_event(watch) == "/w/a/b"
            await writer.write("/w", "top")
            assert await next_event(watch) == "/w"
            await writer.write("/other", "x")
            await no_event(watch, lambda: watcher.read("/w"))
            await writer.rm("/w/a")
            assert await next_event(watch) == "/w/a"
            await no_event(watch, lambda: watcher.read("/w"))
        assert watcher.watch_count == 0
        await writer.write("/w/c", "after unwatch")
        async with watcher.watch("/w", token="t2") as watch2:
            assert await next_event(watch2) == "/w"
            await no_event(watch2, lambda: watcher.read("/w"))


async def test_rm_fires_for_watched_descendants(connect: ClientFactory) -> None:
    async with connect(0) as store:
        await store.write("/r/a/b/c", "1")
        async with store.watch("/r/a/b/c") as deep, store.watch("/r/x") as unrelated:
            assert await next_event(deep) == "/r/a/b/c"
            assert await next_event(unrelated) == "/r/x"
            await store.rm("/r/a")
            assert await next_event(deep) == "/r/a/b/c"
            await no_event(unrelated, lambda: store.read("/r"))


async def test_relative_watch_reports_relative_paths(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(4)
    async with connect(4) as store, store.watch("device") as watch:
        assert await next_event(watch) == "device"
        await store.write("device/vbd/state", "1")
        assert await next_event(watch) == "device/vbd/state"


async def test_duplicate_watch_is_eexist_and_unknown_unwatch_enoent(connect: ClientFactory) -> None:
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    async with connect(0) as store:
        async with store.watch("/d", token="tok"):
            with pytest.raises(StoreError) as info:
                await store.request(SockmsgType.WATCH, join_strings("/d", "tok"))
            assert info.value.code == "EEXIST"
        with pytest.raises(StoreError) as info:
            await store.request(SockmsgType.UNWATCH, join_strings("/d", "tok"))
        assert info.value.code == "ENOENT"


async def test_transaction_commit_is_atomic(connect: ClientFactory) -> None:
    async with connect(0) as store, connect(0) as other, other.watch("/tx") as watch:
        assert await next_event(watch) == "/tx"
        async with store.transaction() as tx:
            await tx.write("/tx/a", "1")
            await tx.write("/tx/b", "2")
            assert await tx.read("/tx/a") == "1"  # own writes visible
            assert not await other.exists("/tx/a")  # others see nothing yet
            await no_event(watch, lambda: other.read("/local"))
        assert await other.read("/tx/b") == "2"
        seen = {await next_event(watch), await next_event(watch)}
        assert seen == {"/tx/a", "/tx/b"}


async def test_transaction_abort_on_exception(connect: ClientFactory) -> None:
    async with connect(0) as store:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.write("/aborted", "1")
                raise RuntimeError("boom")
        assert not await store.exists("/aborted")


async def test_transaction_conflict_eagain_and_transact_retry(connect: ClientFactory) -> None:
    async with connect(0) as store, connect(0) as other:
        await store.write("/counter", "0")
        with pytest.raises(StoreError) as info:
            async with store.transaction() as tx:
                value = int(await tx.read("/counter"))
                await other.write("/counter", "100")  # conflicting write outside
                await tx.write("/counter", str(value + 1))
        assert info.value.code == "EAGAIN"
        assert await store.read("/counter") == "100"

        attempts = 0

        async def increment(tx: Transaction) -> int:
            nonlocal attempts
            attempts += 1
            value = int(await tx.read("/counter"))
            if attempts == 1:
                await other.write("/counter", "200")
            await tx.write("/counter", str(value + 1))
            return value + 1

        assert await store.transact(increment) == 201
        assert attempts == 2
        assert await store.read("/counter") == "201"


async def test_concurrent_transactions_from_many_tasks(connect: ClientFactory) -> None:
    async with connect(0) as store:
        await store.write("/n", "0")

        async def bump(tx: Transaction) -> None:
            await tx.write("/n", str(int(await tx.read("/n")) + 1))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(store.transact, bump, 100)
        assert await store.read("/n") == "20"


async def test_transaction_errors(connect: ClientFactory) -> None:
    from ringkit.proto.xs_wire import SockmsgType, join_strings

    async with connect(0) as store:
        with pytest.raises(StoreError) as info:
            await store.request(SockmsgType.READ, join_strings("/local"), tx_id=12345)
        assert info.value.code == "ENOENT"
        with pytest.raises(StoreError) as info:
            await store.request(SockmsgType.TRANSACTION_END, join_strings("T"))
        assert info.value.code == "ENOENT"
        async with store.transaction() as tx:
            tx_id = tx.tx_id  # type: ignore[attr-defined]
            with pytest.raises(StoreError) as info:
                await store.request(SockmsgType.TRANSACTION_START, join_strings(""), tx_id)
            assert info.value.code == "EBUSY"
            with pytest.raises(StoreError) as info:
                await store.request(SockmsgType.TRANSACTION_END, join_strings("X"), tx_id)
            assert info.value.code == "EINVAL"


async def test_many_concurrent_requests_are_demultiplexed(connect: ClientFactory) -> None:
    async with connect(0) as store:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(store.write, f"/m/{i}", str(i))
        results: dict[int, str] = {}

        async def fetch(i: int) -> None:
            results[i] = await store.read(f"/m/{i}")

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(fetch, i)
        assert results == {i: str(i) for i in range(50)}


async def test_cancelled_request_does_not_confuse_the_client(connect: ClientFactory) -> None:
    async with connect(0) as store:
        await store.write("/c", "1")
        for _ in range(20):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await store.read("/c")
            with anyio.move_on_after(0):
                await store.read("/c")
        assert await store.read("/c") == "1"


async def test_long_directory_uses_directory_part(connect: ClientFactory) -> None:
    async with connect(0) as store:
        names = [f"child-with-a-long-name-{i:04d}" for i in range(200)]  # > 4096 bytes listed
        async with store.transaction() as tx:
            for name in names:
                await tx.write(f"/big/{name}", "")
        assert await store.directory("/big") == names


async def test_introduce_and_release_domain_special_watches(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    async with (
        connect(0) as dom0,
        dom0.watch("@introduceDomain") as intro,
        dom0.watch("@releaseDomain") as rel,
    ):
        assert await next_event(intro) == "@introduceDomain"
        assert await next_event(rel) == "@releaseDomain"
        server.introduce_domain(5)
        assert await next_event(intro) == "@introduceDomain"
        assert await dom0.get_perms("/local/domain/5") == [Permission(5, Access.NONE)]
        assert await dom0.is_domain_introduced(5)
        server.release_domain(5)
        assert await next_event(rel) == "@releaseDomain"
        assert not await dom0.exists("/local/domain/5")
        assert not await dom0.is_domain_introduced(5)
        # The same through the wire, as a toolstack in dom0 does it.
        await dom0.introduce_domain(6, 1234, 5)
        assert await next_event(intro) == "@introduceDomain"
        await dom0.release_domain(6)
        assert await next_event(rel) == "@releaseDomain"
        with pytest.raises(StoreError) as info:
            await dom0.release_domain(6)
        assert info.value.code == "ENOENT"


async def test_release_domain_ends_its_connections(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(8)
    async with connect(8) as guest:
        async with guest.watch("data") as watch:
            assert await next_event(watch) == "data"
            with pytest.raises(anyio.BrokenResourceError):
                async with guest.transaction() as tx:
                    await tx.write("data/x", "1")
                    assert server.watch_count(8) == 1
                    assert server.transaction_count(8) == 1
                    server.release_domain(8)
                    await tx.read("data/x")
        assert server.watch_count() == 0
        assert server.transaction_count() == 0


async def test_special_watch_needs_read_permission(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(2)
    async with connect(2) as guest, connect(0) as dom0, guest.watch("@releaseDomain") as watch:
        assert await next_event(watch) == "@releaseDomain"  # the initial event is always sent
        server.introduce_domain(9)
        server.release_domain(9)
        await no_event(watch, lambda: guest.exists("x"))
        await dom0.set_perms(
            "@releaseDomain", [Permission(0, Access.NONE), Permission(2, Access.READ)]
        )
        server.introduce_domain(10)
        server.release_domain(10)
        assert await next_event(watch) == "@releaseDomain"


async def test_unprivileged_cannot_introduce(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(2)
    async with connect(2) as guest:
        with pytest.raises(StoreError) as info:
            await guest.introduce_domain(11)
        assert info.value.code == "EACCES"


async def test_nul_in_path_is_a_config_error(connect: ClientFactory) -> None:
    from ringkit import ConfigError

    async with connect(0) as store:
        with pytest.raises(ConfigError, match="NUL"):
            await store.write("/a\0b", "x")
        assert await store.read("/local/domain/0/domid") == "0"


async def test_aclose_wakes_waiting_watchers(connect: ClientFactory) -> None:
    async with connect(0) as store:
        results: list[type[BaseException] | str] = []

        async def iterate() -> None:
            async with store.watch("/closing") as watch:
                results.append(await watch.__anext__())
                try:
                    results.append(await watch.__anext__())
                except (anyio.ClosedResourceError, StopAsyncIteration) as exc:
                    results.append(type(exc))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(iterate)
                while not results:
                    await anyio.sleep(0.01)
                await store.aclose()
        assert results[0] == "/closing"
        assert results[1] in (anyio.ClosedResourceError, StopAsyncIteration)
        with pytest.raises(anyio.ClosedResourceError):
            await store.read("/closing")
