"""Split event channels (``feature-split-event-channels``) on the simulated Xen.

The backend offers them and accepts either form; the frontend uses them when offered (its
``split_event_channels`` option, on by default).  In both forms, with one queue and with two,
frames of every size cross both rings at once with their content checked, and the keys say
which form was used (``event-channel-tx`` and ``event-channel-rx``, distinct ports, and no
``event-channel``; or ``event-channel`` alone).  Negative control: a frontend that writes
only one of the two split keys is refused with a typed error in the backend's error node,
and nothing connects.
"""

from __future__ import annotations

import anyio
import pytest
from networld import World, frame, running_backend, world
from ringkit.backends.net import NetBackend
from ringkit.frontends.net import NetFrontend

from ringkit import PeerRefusedError, RingkitError
from ringkit.device import Nodes

pytestmark = pytest.mark.anyio

SIZES = [14, 60, 1514, 4097, 9000, 65535]


@pytest.mark.parametrize("queues", [1, 2])
@pytest.mark.parametrize("split", [True, False])
async def test_frames_both_ways_over_either_form(split: bool, queues: int) -> None:
    with anyio.fail_after(120):
        async with world() as w, running_backend(w, max_queues=queues) as (be, wire):
            async with NetFrontend(w.domu, 0, 0, split_event_channels=split,
                                   max_queues=queues) as vif:
                for q in be.queues:
                    assert len(q.split_events) == (2 if split else 0)
                for q in vif.queues:
                    keys = q.nodes
                    if split:
                        tx = int(await keys.read("event-channel-tx"))
                        rx = int(await keys.read("event-channel-rx"))
                        assert tx != rx and tx > 0 and rx > 0
                        assert await keys.read_optional("event-channel") is None
                        assert [e.port for e in q.split_events] == [tx, rx]
                    else:
                        assert int(await keys.read("event-channel")) == q.event.port
                        assert await keys.read_optional("event-channel-tx") is None
                        assert await keys.read_optional("event-channel-rx") is None
                sent = [frame(i, SIZES[i % len(SIZES)]) for i in range(300)]

                async def guest_sends() -> None:
                    for f in sent:
                        await vif.send(f)

                async def host_sends() -> None:
                    for f in sent:
                        await wire.to_guest.send(f)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(guest_sends)
                    tg.start_soon(host_sends)
                    got_host = [await wire.from_guest.receive() for _ in sent]
                    got_guest = [await vif.receive() for _ in sent]
                # with several queues each flow keeps its order, not the whole stream
                assert sorted(got_host) == sorted(sent) and sorted(got_guest) == sorted(sent)
                assert be.stats.tx_refused == be.stats.rx_dropped == vif.stats.rx_errors == 0
            await be.wait_finished()


class OnlyTxChannel(NetFrontend):
    """Negative control: writes event-channel-tx but not event-channel-rx."""

    async def publish(self, nodes: Nodes) -> None:
        await super().publish(nodes)
        await nodes.store.rm(nodes.node("event-channel-rx"))


async def test_a_frontend_with_one_split_key_is_refused() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, _):
            vif = OnlyTxChannel(w.domu, 0, 0)
            with pytest.raises(PeerRefusedError) as caught:
                async with vif:
                    pass
            words = "event-channel-tx without event-channel-rx"
            assert words in str(caught.value), caught.value
            error = await backend_error(w, be)
            assert error is not None and words in error, error
            assert error.split(" ", 1)[0].isdigit(), error  # errno, then the message
            assert not be.is_connected and not be.queues


async def backend_error(w: World, be: NetBackend) -> str | None:
    try:
        return (await w.dom0.store.read_bytes(be.error_path)).decode()
    except RingkitError:
        return None
