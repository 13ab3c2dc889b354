"""ringkit.testing.pipes: an event channel over two pipes keeps an event channel's rules --
notifications reach the peer, the peer's coalesce into one wake-up, a peer that goes away is
seen as gone -- and refuses bad arguments by name.  The negative control is a channel that
takes the peer's end-of-file for a wake-up: the peer-gone check must catch it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import anyio
import pytest

from ringkit import ConfigError, EventChannelError, PeerGoneError
from ringkit.testing.pipes import PipeEventChannel, pipe_event_channel

pytestmark = pytest.mark.anyio


class _Link:
    """ringkit's channel and the raw descriptors of the peer's side."""

    def __init__(self, cls: type[PipeEventChannel] = PipeEventChannel) -> None:
        to_peer_r, to_peer_w = os.pipe()
        from_peer_r, from_peer_w = os.pipe()
        self.peer_rx, self.peer_tx = to_peer_r, from_peer_w
        if cls is PipeEventChannel:
            self.channel = pipe_event_channel(rx=from_peer_r, tx=to_peer_w, port=9,
                                              remote_domid=3)
        else:
            self.channel = cls(from_peer_r, to_peer_w, 9, 3)
        self.open = [self.peer_rx, self.peer_tx]

    def close_peer(self, fd: int) -> None:
        os.close(fd)
        self.open.remove(fd)

    def close(self) -> None:
        for fd in self.open:
            os.close(fd)


@pytest.fixture
def link() -> Iterator[_Link]:
    made = _Link()
    yield made
    made.close()


class _EofIsAWakeUp(PipeEventChannel):
    """Broken on purpose: reads the peer's end-of-file as a notification."""

    async def wait(self) -> None:
        await anyio.wait_readable(self._rx)
        os.read(self._rx, 4096)


async def _check_peer_gone(link: _Link) -> None:
    link.close_peer(link.peer_tx)
    with anyio.fail_after(5):
        with pytest.raises(PeerGoneError):
            await link.channel.wait()


async def test_notify_reaches_the_peer_and_reports_what_it_was_given(link: _Link) -> None:
    assert (link.channel.port, link.channel.remote_domid) == (9, 3)
    link.channel.notify()
    link.channel.notify()
    assert os.read(link.peer_rx, 16) == b"\1\1"
    await link.channel.aclose()


async def test_the_peers_notifications_coalesce_into_one_wake_up(link: _Link) -> None:
    os.write(link.peer_tx, b"\1\1\1")
    with anyio.fail_after(5):
        await link.channel.wait()
    with anyio.move_on_after(0.2) as scope:
        await link.channel.wait()
    assert scope.cancelled_caught, "three notifications woke the channel twice"
    os.write(link.peer_tx, b"\1")
    with anyio.fail_after(5):
        await link.channel.wait()
    await link.channel.aclose()


async def test_a_peer_that_closes_its_end_is_gone(link: _Link) -> None:
    await _check_peer_gone(link)
    await link.channel.aclose()


async def test_negative_control_the_peer_gone_check_catches_eof_taken_for_a_wake_up() -> None:
    broken = _Link(_EofIsAWakeUp)
    try:
        with pytest.raises(pytest.fail.Exception):
            await _check_peer_gone(broken)
        await broken.channel.aclose()
    finally:
        broken.close()


async def test_notify_to_a_peer_that_stopped_reading_is_enotconn(link: _Link) -> None:
    link.close_peer(link.peer_rx)
    with pytest.raises(EventChannelError) as caught:
        link.channel.notify()
    assert caught.value.errno == errno.ENOTCONN
    await link.channel.aclose()


async def test_a_closed_channel_refuses_and_closes_once(link: _Link) -> None:
    await link.channel.aclose()
    await link.channel.aclose()
    with pytest.raises(EventChannelError):
        link.channel.notify()
    with pytest.raises(EventChannelError):
        await link.channel.wait()


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"rx": -1, "tx": 5}, "rx=-1"),
    ({"rx": 5, "tx": 5}, "distinct"),
    ({"rx": 5, "tx": 6, "port": 0}, "port"),
    ({"rx": 5, "tx": 6, "remote_domid": 0x7FF0}, "remote_domid"),
])
def test_bad_arguments_are_refused_by_name(kwargs: dict[str, int], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        pipe_event_channel(**kwargs)
