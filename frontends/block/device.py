"""`BlockFrontend`: a Xen virtual block device (vbd) seen from the guest, as async byte I/O.

The handshake is Linux xen-blkfront's: the frontend publishes ``protocol`` = x86_64-abi and
``feature-persistent`` with its rings (up to ``ring-page-order`` 4 and several queues when the
backend offers them), and once the backend says Connected reads ``sectors``, ``info``,
``sector-size`` and the ``feature-*`` nodes.  It then grants a pool of data pages to the backend
(kept for the whole connection: with ``feature-persistent`` the backend maps each page once)
and starts one receive loop per ring.

``read``/``write``/``flush``/``discard`` go through the current connection's `BlockClient`, on
the request-queue layer (`ringkit.requests`).  If the backend goes away, requests in flight fail
with `PeerGoneError`; a hostile backend fails them with `RemoteProtocolError` and the device is
disconnected (Closing -> Closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import ClassVar

from ringkit import ConfigError, PeerGoneError
from ringkit.abc import Domain
from ringkit.device import Frontend, Nodes
from ringkit.proto import blkif
from ringkit.proto.blkif_xs import BackendFeatures, DiskProperties, FrontendFeatures
from ringkit.requests import GrantPool

from .client import BlockClient, DiskInfo, PoolBuffer, ReadOp, WriteOp
from .errors import BlockIOError

DEFAULT_POOL_PAGES = 512
"""Data pages granted to the backend per connection (2 MiB): two 1 MiB requests in flight."""


class BlockFrontend(Frontend):
    """The vbd frontend of device `devid`, served by domain `backend_id`.

    ``async with BlockFrontend(domain, backend_id, devid) as disk:`` connects; then
    ``await disk.read(offset, length)``, ``write(offset, data)``, ``flush()``,
    ``discard(offset, length)``; offsets and lengths in bytes, multiples of the sector size.

    Options: `pool_pages` data pages to grant, `ring_page_order` (0..4) and `queues` wanted
    (capped by what the backend offers), `persistent` to offer persistent grants,
    `indirect` to use indirect requests when offered, `verify_reads` to check that every read
    answered OKAY really wrote its pages (`StaleReadError` otherwise; see `BlockClient`),
    `poll_us` to let each ring's receiver spin up to that many microseconds for answers to
    requests in flight before sleeping on the event channel (0, the default: never spin; see
    `ringkit.channel.RingChannel`).
    """

    device_type: ClassVar[str] = "vbd"
    ring_layout = blkif.RING_LAYOUT
    request_codec = blkif.CODEC
    max_ring_page_order = 4
    max_queues = 4

    def __init__(self, domain: Domain, backend_id: int = 0, devid: int = 0, *,
                 pool_pages: int = DEFAULT_POOL_PAGES, ring_page_order: int = 0,
                 queues: int = 1, persistent: bool = True, indirect: bool = True,
                 verify_reads: bool = False, poll_us: int = 0) -> None:
        if not 0 <= ring_page_order <= self.max_ring_page_order:
            raise ConfigError(f"ring_page_order must be 0..{self.max_ring_page_order}, "
                              f"got {ring_page_order}")
        if not 1 <= queues <= self.max_queues:
            raise ConfigError(f"queues must be 1..{self.max_queues}, got {queues}")
        if pool_pages < blkif.MAX_SEGMENTS_PER_REQUEST:
            raise ConfigError(f"pool_pages must be at least {blkif.MAX_SEGMENTS_PER_REQUEST}")
        # what this frontend asks for is its maximum; the backend's offer caps it
        super().__init__(domain, backend_id, devid, max_ring_page_order=ring_page_order,
                         max_queues=queues, poll_us=poll_us)
        self.pool_pages = pool_pages
        self.offer_persistent = persistent
        self.use_indirect = indirect
        self.verify_reads = verify_reads
        self.info: DiskInfo | None = None
        """What the backend advertised, for the current connection."""
        self._client: BlockClient | None = None

    # ------------------------------------------------------------------ handshake hooks

    async def publish(self, nodes: Nodes) -> None:
        offered = FrontendFeatures(protocol=blkif.PROTOCOL_X86_64, persistent=self.offer_persistent)
        for name, value in offered.to_nodes().items():
            await nodes.write(name, value)

    async def peer_connected(self, backend: Nodes) -> None:
        values = await backend.read_values(BackendFeatures.KEYS + DiskProperties.KEYS)
        features = BackendFeatures.from_nodes(values, backend.path)
        disk = DiskProperties.from_nodes(values, backend.path)
        info = DiskInfo(
            sectors=disk.sectors,
            sector_size=disk.sector_size,
            readonly=disk.readonly,
            max_indirect_segments=features.max_indirect_segments if self.use_indirect else 0,
            flush=features.flush_cache,
            barrier=features.barrier,
            discard=features.discard,
            discard_granularity=(disk.sector_size if features.discard_granularity is None
                                 else features.discard_granularity),
            discard_alignment=features.discard_alignment,
            persistent=self.offer_persistent and features.persistent,
        )
        pool = await GrantPool.share(self.domain.grants, self.peer_id, self.pool_pages)
        client = BlockClient([queue.channel for queue in self.queues], pool, info,
                             verify_reads=self.verify_reads)
        self.info, self._client = info, client
        # a hostile or vanished backend ends run() with a typed error: the device's task
        # group turns that into a disconnect (Closing -> Closed), as for a broken ring
        self.tasks.start_soon(client.run)

    async def disconnected(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.fail(PeerGoneError(f"{self.address}: disconnected"))
            await client.pool.aclose()

    # ------------------------------------------------------------------ I/O

    @property
    def client(self) -> BlockClient:
        """The current connection's I/O engine.

        Raises:
            PeerGoneError: not connected.
        """
        client = self._client
        if client is None or not self.is_connected:
            raise PeerGoneError(f"{self.address} is not connected")
        return client

    @property
    def size(self) -> int:
        """Disk size in bytes."""
        return self.client.info.size

    async def read(self, offset: int, length: int) -> bytes:
        """Read `length` bytes at byte `offset` (see `BlockClient` for the errors)."""
        return await self.client.read(offset, length)

    async def read_into(self, offset: int, buffer: memoryview | bytearray) -> None:
        """Read ``len(buffer)`` bytes at byte `offset` into `buffer` (no allocation)."""
        await self.client.read_into(offset, buffer)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at byte `offset`; returns once the backend has it in the image."""
        await self.client.write(offset, data)

    async def submit(self, ops: Sequence[ReadOp | WriteOp], *, depth: int | None = None
                     ) -> list[BlockIOError | None]:
        """Run a batch of reads and writes together, published with one push per run that
        fits, at most `depth` in flight; one result per op (see `BlockClient.submit`)."""
        return await self.client.submit(ops, depth=depth)

    def lend(self, length: int) -> AbstractAsyncContextManager[PoolBuffer]:
        """Borrow `length` bytes of granted pool pages for I/O without a copy
        (`read_lent` / `write_lent`; see `BlockClient.lend`)."""
        return self.client.lend(length)

    async def read_lent(self, offset: int, buffer: PoolBuffer) -> None:
        """Read at byte `offset` straight into the lent pages of `buffer`."""
        await self.client.read_lent(offset, buffer)

    async def write_lent(self, offset: int, buffer: PoolBuffer) -> None:
        """Write the lent pages of `buffer` at byte `offset`, straight from them."""
        await self.client.write_lent(offset, buffer)

    async def flush(self) -> None:
        """Make every acknowledged write durable."""
        await self.client.flush()

    async def discard(self, offset: int, length: int) -> None:
        """Discard a byte range (reads back as zeros from ringkit's backend)."""
        await self.client.discard(offset, length)


__all__ = ("DEFAULT_POOL_PAGES", "BlockFrontend")
