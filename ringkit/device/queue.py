"""One connected ring of a device (a "queue" in blkif's multi-queue words) and its xenstore keys.

Key names follow io/blkif.h (and netif.h):

* one page: ``ring-ref``; 2**order pages (order > 0): ``ring-page-order`` in the device dir and
  ``ring-ref0`` .. ``ring-ref<2**order - 1>`` next to the event channel;
* one queue: the keys sit in the frontend dir itself; n > 1 queues: ``multi-queue-num-queues``
  = n and each queue's keys under ``queue-<i>/``;
* the event channel: ``event-channel`` (the console says ``port``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Generic

import anyio
from anyio.abc import AsyncResource
from typing_extensions import TypeVar

from .._errors import RemoteProtocolError, RingkitError, StoreError
from ..abc import EventChannel, MappedPages, SharedPages
from .paths import Nodes

__all__ = (
    "MAX_QUEUES",
    "ChannelT",
    "Queue",
    "is_ring_key",
    "queue_nodes",
    "read_ring_refs",
    "ring_ref_names",
)

MAX_QUEUES = 64
"""Upper bound ringkit accepts for ``multi-queue-num-queues`` from a peer."""


def ring_ref_names(order: int, keys: Sequence[str] | None = None) -> list[str]:
    """The nodes of one queue's ring refs: `keys` when the protocol names its pages itself
    (netif's ``tx-ring-ref``, ``rx-ring-ref``; see `DeviceBase.ring_ref_keys`), else
    ``["ring-ref"]`` for one page and ``ring-ref0`` .. ``ring-ref<2**order - 1>`` for more."""
    if keys:
        return list(keys)
    return ["ring-ref"] if order == 0 else [f"ring-ref{i}" for i in range(1 << order)]


_RING_KEY = re.compile(r"^(ring-ref\d*|queue-\d+|ring-page-order|multi-queue-num-queues)$")


def is_ring_key(name: str, event_channel_key: str = "event-channel",
                ring_ref_keys: Sequence[str] = ()) -> bool:
    """Whether `name`, a child of a frontend dir, is one of the keys that describe its rings
    (ring refs -- the protocol's own `ring_ref_keys` too --, their order, queue dirs, the event
    channel): the frontend rewrites them all on every connection, so none is left over from an
    earlier one."""
    return (name == event_channel_key or name in ring_ref_keys
            or _RING_KEY.match(name) is not None)


def queue_nodes(device: Nodes, index: int, num_queues: int) -> Nodes:
    """Where queue `index`'s ring refs and event channel live in the frontend dir."""
    return device if num_queues == 1 else device.sub(f"queue-{index}")


async def read_ring_refs(nodes: Nodes, order: int, keys: Sequence[str] | None = None
                         ) -> list[int]:
    """Read and validate the grant refs of one queue (untrusted: written by the frontend), from
    the nodes `ring_ref_names` names.

    Each node is read once.

    Raises:
        RemoteProtocolError: a missing (naming the node) or malformed ref.
        StoreError: the store failed otherwise.
    """
    refs = []
    for name in ring_ref_names(order, keys):
        # One read per node: the frontend may rewrite it between two reads.
        try:
            refs.append(await nodes.read_int(name, maximum=2**32 - 1))
        except StoreError as exc:
            if exc.code != "ENOENT":
                raise
            raise RemoteProtocolError(f"{nodes.node(name)} is missing") from None
    return refs


ChannelT = TypeVar("ChannelT", bound=AsyncResource, default=AsyncResource)
"""What a driver talks through on one queue (`Queue.channel`)."""


@dataclass(eq=False)
class Queue(Generic[ChannelT]):
    """One ring of a connected device: its pages, its event channel and the channel built on
    them.  Closing releases them in teardown order: the channel lets go of the buffer, the pages
    are unmapped (backend) or unshared (frontend), then the event channel is closed.

    Generic in the channel type: a `Frontend` or `Backend` parametrized with its channel type
    (the default is io/ring.h's `FrontRingChannel` / `BackRingChannel`) hands its driver
    queues whose `channel` has that type, with no cast or isinstance check."""

    index: int
    nodes: Nodes
    """The frontend dir (or its ``queue-<i>`` subdir) that holds this queue's keys."""
    pages: SharedPages | MappedPages
    event: EventChannel
    order: int = 0
    _channel: ChannelT | None = None
    closed: bool = False
    split_events: tuple[EventChannel, ...] = ()
    """With split event channels (`ringkit.device.DeviceBase.split_event_channel_keys`): one
    per ring, in the order of those keys (`event` is the first); empty when one event channel
    serves every ring."""

    @property
    def events(self) -> tuple[EventChannel, ...]:
        """Every event channel of the queue: `split_events`, or just `event`."""
        return self.split_events or (self.event,)

    @property
    def channel(self) -> ChannelT:
        """What the driver talks through: a `RingChannel` for io/ring.h drivers, or whatever
        the driver's ``make_channel`` built (the console's `PipeStream`).

        Raises:
            RuntimeError: asked before ``make_channel`` ran (a framework bug).
        """
        if self._channel is None:
            raise RuntimeError(f"queue {self.index} has no channel yet")
        return self._channel

    @channel.setter
    def channel(self, channel: ChannelT) -> None:
        self._channel = channel

    @property
    def buffer(self) -> memoryview:
        """The ring pages, contiguous."""
        return self.pages.buffer

    async def aclose(self) -> None:
        """Tear down in order; errors of a peer that is already gone are not ours to raise."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            for resource in (self._channel, self.pages, *self.events):
                if resource is not None:
                    with suppress(RingkitError, anyio.ClosedResourceError,
                                  anyio.BrokenResourceError, OSError):
                        await resource.aclose()
