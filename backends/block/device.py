"""`BlockBackend`: serves a raw image file or block device as a Xen virtual block device (vbd).

The xenstore side follows Linux's xen-blkback.  Before InitWait the backend dir gets the limits
and features (``max-ring-page-order``, ``multi-queue-max-queues``, ``feature-persistent``,
``feature-max-indirect-segments``, ``feature-flush-cache``, ``feature-barrier``,
``feature-discard`` with ``discard-granularity``/``discard-alignment``/``discard-secure``); once
the frontend's rings are mapped, the disk properties (``sectors``, ``info``, ``sector-size``,
``physical-sector-size``) are written before Connected.  The frontend's ``protocol`` must be
the x86_64 ABI (or absent); its ``feature-persistent`` switches persistent grants on.

Each ring is served by its own task with its own `BlockService` (and persistent grant cache),
all on the same image.  A read-only backend (`ServiceConfig.read_only` or the toolstack's
``mode`` = ``r``) advertises VDISK_READONLY and answers every kind of write with
BLKIF_RSP_ERROR.  Everything the backend offers comes from its `ServiceConfig`, validated
when that is built.
"""

from __future__ import annotations

import os
from typing import ClassVar

from ringkit import ConfigError, RemoteProtocolError
from ringkit.abc import Domain
from ringkit.channel import BackRingChannel
from ringkit.device import Backend, Nodes, Queue
from ringkit.proto import blkif
from ringkit.proto.blkif_xs import BackendFeatures, DiskProperties, FrontendFeatures, Mode
from ringkit.requests import GrantMapper

from .config import MAX_RING_PAGE_ORDER, ServiceConfig
from .engine import uring_unavailable
from .image import Image
from .queue import serve_ring
from .service import BlockService, ServiceStats


class BlockBackend(Backend):
    """The vbd backend for one frontend's device `devid`, serving `image`.

    Use as ``async with BlockBackend(domain, frontend_id, devid, image=path) as be:
    await be.run()``.

    Raises (constructor):
        ConfigError: the image cannot be opened as asked (see `Image`), or the config asks
            for io_uring (``io_engine = "uring"``) where the kernel gives none.
    """

    device_type: ClassVar[str] = "vbd"
    ring_layout = blkif.RING_LAYOUT
    request_codec = blkif.CODEC
    max_ring_page_order = MAX_RING_PAGE_ORDER
    """The class's ceiling; an instance offers its `config`'s value."""
    max_queues = 4
    """The default; an instance offers its `config`'s value."""

    def __init__(self, domain: Domain, frontend_id: int, devid: int = 0, *,
                 image: str | os.PathLike[str], config: ServiceConfig | None = None) -> None:
        config = config or ServiceConfig()
        super().__init__(domain, frontend_id, devid,
                         max_ring_page_order=config.max_ring_page_order,
                         max_queues=config.max_queues, poll_us=config.poll_us)
        self.config = config
        if config.io_engine == "uring" and (why := uring_unavailable()):
            raise ConfigError(f"io_engine = uring: io_uring is unavailable here ({why})")
        self.image = Image(image, readonly=config.read_only, direct=config.direct)
        self.persistent = False
        """Whether the current connection uses persistent grants (both ends offered them)."""
        self.services: dict[int, BlockService] = {}
        """The current connection's per-ring services (by queue index)."""
        self.totals = ServiceStats()
        """Counters summed over every connection that ended."""

    # ------------------------------------------------------------------ handshake hooks

    async def advertise(self, nodes: Nodes) -> None:
        mode = Mode.from_nodes(await nodes.read_values(["mode"]), nodes.path)
        if mode is Mode.READ_ONLY and not self.image.readonly:
            path = self.image.path
            self.image.close()
            self.image = Image(path, readonly=True, direct=self.config.direct)
        writable = not self.image.readonly
        discard = self.config.discard and writable
        features = BackendFeatures(
            persistent=self.config.persistent,
            max_indirect_segments=self.config.max_indirect_segments,
            flush_cache=self.config.flush and writable,
            barrier=self.config.barrier and writable,
            discard=discard,
            discard_granularity=self.config.discard_granularity if discard else None,
            discard_alignment=self.config.discard_alignment if discard else 0,
        )
        for name, value in features.to_nodes().items():
            await nodes.write(name, value)

    async def connecting(self, frontend: Nodes) -> None:
        offered = FrontendFeatures.from_nodes(
            await frontend.read_values(FrontendFeatures.KEYS), frontend.path)
        if offered.protocol != blkif.PROTOCOL_X86_64:
            raise RemoteProtocolError(f"{frontend.node('protocol')} = {offered.protocol!r}: only "
                                      f"{blkif.PROTOCOL_X86_64!r} is served")
        self.persistent = self.config.persistent and offered.persistent

    async def rings_mapped(self, nodes: Nodes) -> None:
        disk = DiskProperties(sectors=self.image.sectors,
                              info=blkif.VDISK_READONLY if self.image.readonly else 0)
        for name, value in disk.to_nodes().items():
            await nodes.write(name, value)
        self.services = {
            queue.index: BlockService(
                self.image,
                GrantMapper(self.domain.grants, self.peer_id, persistent=self.persistent,
                            max_persistent=self.config.max_persistent),
                self.config,
            )
            for queue in self.queues
        }

    async def serve(self, queue: Queue[BackRingChannel]) -> None:
        await serve_ring(queue.channel, self.services[queue.index])

    async def disconnected(self) -> None:
        services, self.services = self.services, {}
        for service in services.values():
            for name in ServiceStats.__dataclass_fields__:
                setattr(self.totals, name,
                        getattr(self.totals, name) + getattr(service.stats, name))
            try:
                await service.aclose()
            finally:
                await service.mapper.aclose()

    async def __aenter__(self) -> BlockBackend:
        try:
            await super().__aenter__()
        except BaseException:
            self.image.close()
            raise
        return self

    async def aclose(self) -> None:
        """Stop serving, release the rings and grants, close the handshake, close the image."""
        try:
            await super().aclose()
        finally:
            self.image.close()


__all__ = ("BlockBackend",)
