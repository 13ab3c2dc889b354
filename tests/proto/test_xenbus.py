"""The XenbusState tables and the sans-I/O `Handshake` engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkit import LocalProtocolError, RemoteProtocolError
from ringkit.proto.xenbus import (
    MOVES,
    REACHABLE,
    REACTIONS,
    Handshake,
    Reaction,
    Role,
    XenbusState,
    parse_state,
)

S = XenbusState
HEADER = Path("/usr/include/xen/io/xenbus.h")


@pytest.mark.skipif(
    not HEADER.exists() or shutil.which("cc") is None, reason="needs libxen-dev and a C compiler"
)
def test_values_match_xen_header(tmp_path: Path) -> None:
    body = "".join(f'printf("%d\\n", {s.xen_name});' for s in S)
    src = tmp_path / "x.c"
    src.write_text(f"#include <stdio.h>\n#include <xen/io/xenbus.h>\nint main(void){{{body}}}\n")
    subprocess.run(["cc", "-o", str(tmp_path / "x"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "x")], check=True, capture_output=True, text=True).stdout
    assert [int(v) for v in out.split()] == [int(s) for s in S]


def test_wire_format() -> None:
    assert S.INIT_WAIT.to_wire() == "2"
    assert S.INIT_WAIT.xen_name == "XenbusStateInitWait"
    assert parse_state("4") is S.CONNECTED
    assert parse_state(b"6") is S.CLOSED
    assert parse_state(None) is S.UNKNOWN
    assert parse_state("") is S.UNKNOWN


@pytest.mark.parametrize("bad", ["9", "-1", "4a", " 4", "04x", "\u0661", b"\xff", "123", "4.0"])
def test_malformed_peer_state_is_remote_error(bad: str | bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_state(bad)
    hs = Handshake(Role.BACKEND)
    with pytest.raises(RemoteProtocolError):
        hs.observe(bad)
    # Poisoned: every later call raises too.
    with pytest.raises(RemoteProtocolError):
        hs.observe("1")
    with pytest.raises(RemoteProtocolError):
        hs.move(S.INITIALISING)


def test_every_state_can_close_and_tables_are_complete() -> None:
    for role in Role:
        assert set(MOVES[role]) == set(S)
        for state in S:
            if state not in (S.CLOSING, S.CLOSED):
                assert S.CLOSED in MOVES[role][state]
            assert set(REACTIONS[role][state]) == set(S)
        assert S.INITIALISING in MOVES[role][S.CLOSED]


def test_illegal_local_move_is_local_error() -> None:
    hs = Handshake(Role.FRONTEND)
    hs.move(S.INITIALISING)
    with pytest.raises(LocalProtocolError, match="InitWait"):
        hs.move(S.INIT_WAIT)  # a frontend never waits for hotplug scripts
    hs.move(S.CLOSING)
    with pytest.raises(LocalProtocolError):
        hs.move(S.CONNECTED)
    assert hs.move(S.CLOSING) is S.CLOSING  # rewriting the same state is harmless
    hs.move(S.CLOSED)
    assert hs.restart() is S.INITIALISING


def test_frontend_never_goes_to_initwait() -> None:
    hs = Handshake(Role.BACKEND)
    assert hs.observe("1") is Reaction.NONE
    with pytest.raises(RemoteProtocolError, match="InitWait"):
        hs.observe("2")


def test_blkif_diagram_happy_path() -> None:
    front, back = Handshake(Role.FRONTEND), Handshake(Role.BACKEND)
    front.move(S.INITIALISING)
    back.move(S.INITIALISING)
    assert back.observe(front.state.to_wire()) is Reaction.NONE
    back.move(S.INIT_WAIT)
    assert front.observe(back.state.to_wire()) is Reaction.CONNECT
    front.move(S.INITIALISED)
    assert back.observe(front.state.to_wire()) is Reaction.CONNECT
    back.move(S.CONNECTED)
    assert front.observe(back.state.to_wire()) is Reaction.FINISH
    front.move(S.CONNECTED)
    assert back.observe(front.state.to_wire()) is Reaction.NONE
    # Orderly unplug from the frontend.
    front.move(S.CLOSING)
    assert back.observe("5") is Reaction.CLOSE
    back.move(S.CLOSING)
    back.move(S.CLOSED)
    assert front.observe("6") is Reaction.CLOSE
    front.move(S.CLOSED)
    assert back.observe("6") is Reaction.NONE
    assert back.observe(None) is Reaction.GONE


def test_backend_restart_seen_by_connected_frontend() -> None:
    front = Handshake(Role.FRONTEND, S.CONNECTED, S.CONNECTED)
    # The Closing/Closed of the dead backend were coalesced away.
    assert front.observe("2") is Reaction.RESTART
    front.restart()
    assert front.reaction() is Reaction.CONNECT


def test_frontend_restart_seen_by_connected_backend() -> None:
    back = Handshake(Role.BACKEND, S.CONNECTED, S.CONNECTED)
    assert back.observe("1") is Reaction.RESTART
    back.restart()
    back.move(S.INIT_WAIT)
    assert back.observe("3") is Reaction.CONNECT


def test_reconnect_after_closed() -> None:
    back = Handshake(Role.BACKEND, S.CLOSED, S.CLOSED)
    assert back.observe("1") is Reaction.RESTART


def test_unknown_before_peer_appears_is_not_gone() -> None:
    assert Handshake(Role.FRONTEND).observe(None) is Reaction.NONE


def test_every_role_reaches_every_state_only_as_moves_allow() -> None:
    for role in Role:
        for state in S:
            assert state in REACHABLE[role][state]
            assert MOVES[role][state] <= REACHABLE[role][state]


def _apply(hs: Handshake, reaction: Reaction) -> None:
    """What a driver does for each reaction, reduced to state moves."""
    if reaction is Reaction.CONNECT:
        hs.move(S.INITIALISED if hs.role is Role.FRONTEND else S.CONNECTED)
    elif reaction is Reaction.FINISH:
        hs.move(S.CONNECTED)
    elif reaction is Reaction.RESTART:
        hs.restart()
        if hs.role is Role.BACKEND:
            hs.move(S.INIT_WAIT)


@settings(max_examples=300, deadline=None)
@given(
    schedule=st.lists(st.booleans(), min_size=0, max_size=60),
    backend_skips_initwait=st.booleans(),
    frontend_eager=st.booleans(),
)
def test_handshake_converges_under_any_watch_coalescing(
    schedule: list[bool], backend_skips_initwait: bool, frontend_eager: bool
) -> None:
    """Two engines whose watches fire in any order and coalesce always end up Connected."""
    front, back = Handshake(Role.FRONTEND), Handshake(Role.BACKEND)
    front.move(S.INITIALISING)
    if frontend_eager:
        front.move(S.INITIALISED)  # blkif.h: allowed without waiting for InitWait
    back.move(S.INITIALISING)
    back.move(S.INITIALISED if backend_skips_initwait else S.INIT_WAIT)

    def step(hs: Handshake, peer: Handshake) -> bool:
        before = hs.state
        _apply(hs, hs.observe(peer.state.to_wire()))
        return hs.state != before

    for front_turn in schedule:
        step(front, back) if front_turn else step(back, front)
    for _ in range(10):  # then let both run to quiescence
        if not (step(front, back) | step(back, front)):
            break
    assert (front.state, back.state) == (S.CONNECTED, S.CONNECTED)


def test_stale_peer_state_after_peer_death_is_ignored() -> None:
    front = Handshake(Role.FRONTEND, S.CONNECTED, S.CONNECTED)
    front.peer_lost()
    front.restart()
    # The dead backend's node still says Connected: do not "finish" against it.
    assert front.reaction() is Reaction.NONE
    assert front.observe("4") is Reaction.NONE
    # A restarted backend writes a fresh state.
    assert front.observe("2") is Reaction.CONNECT
