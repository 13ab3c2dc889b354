"""The XenbusState tables and the sans-I/O `Handshake` engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tools import require_tools
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkit import LocalProtocolError, RemoteProtocolError
from ringkit.proto.xenbus import (
    LEFTOVER,
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


def test_values_match_xen_header(tmp_path: Path) -> None:
    require_tools("cc", str(HEADER), why="compile a check of the states against Xen's xenbus.h")
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
    hs.move(S.INITIALISING)
    hs.move(S.INIT_WAIT)
    with pytest.raises(RemoteProtocolError):
        hs.observe(bad)
    assert hs.broken and hs.error is not None
    # The connection is over, the end is not: it may still close its side, and the peer's
    # node is ignored -- more garbage, or anything but a fresh start -- without a second error.
    for to in (S.CLOSING, S.CLOSED):
        hs.move(to)
    for later in (bad, "abc", "4", "5", "6", "2"):
        assert hs.observe(later) is Reaction.NONE
    assert hs.broken
    # A frontend starting over is a new connection: the backend starts over too.
    assert hs.observe("1") is Reaction.RESTART
    assert not hs.broken and hs.error is None


@pytest.mark.parametrize(
    ("role", "restart", "reaction"),
    [
        (Role.BACKEND, S.INITIALISING, Reaction.RESTART),
        (Role.BACKEND, S.INITIALISED, Reaction.RESTART),
        (Role.FRONTEND, S.INIT_WAIT, Reaction.RESTART),
        (Role.FRONTEND, S.INITIALISING, Reaction.NONE),  # then InitWait restarts it
    ],
)
def test_a_broken_handshake_waits_for_the_peer_to_start_over(
    role: Role, restart: XenbusState, reaction: Reaction
) -> None:
    hs = Handshake(role)
    hs.move(S.INITIALISING)
    hs.observe(S.INITIALISING)
    with pytest.raises(RemoteProtocolError):
        hs.observe("99")
    hs.move(S.CLOSING)
    hs.move(S.CLOSED)
    assert hs.reaction() is Reaction.NONE
    assert hs.observe(restart.to_wire()) is reaction
    assert hs.error is None


def test_a_broken_handshake_still_sees_the_device_removed() -> None:
    hs = Handshake(Role.BACKEND)
    hs.move(S.INITIALISING)
    hs.observe("4")
    with pytest.raises(RemoteProtocolError):
        hs.observe("2")  # a frontend can never be in InitWait
    assert hs.observe(None) is Reaction.GONE


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


def test_starting_frontend_waits_out_a_backend_left_closed() -> None:
    """The previous connection ended and the backend stayed online at Closed: a new frontend
    keeps Initialising (no Closing, Closed) until the backend answers with InitWait."""
    front = Handshake(Role.FRONTEND)
    front.move(S.INITIALISING)
    assert front.starting
    for leftover in ("6", "5", "6"):
        assert front.observe(leftover) is Reaction.NONE
        assert front.state is S.INITIALISING
    back = Handshake(Role.BACKEND, S.CLOSED, S.CLOSED)
    assert back.observe(front.state.to_wire()) is Reaction.RESTART  # "prepare for reconnect"
    back.move(S.INIT_WAIT)  # blkback goes straight from Closed to InitWait
    assert front.observe(back.state.to_wire()) is Reaction.CONNECT
    assert not front.starting


def test_frontend_that_saw_the_backend_live_still_closes() -> None:
    # A Closed after InitWait answers this connection (e.g. the backend refused the ring).
    front = Handshake(Role.FRONTEND)
    front.move(S.INITIALISING)
    assert front.observe("2") is Reaction.CONNECT
    front.move(S.INITIALISED)
    assert front.observe("6") is Reaction.CLOSE
    # And a connected frontend closes with its backend, as before.
    front = Handshake(Role.FRONTEND, S.CONNECTED, S.CONNECTED)
    assert not front.starting
    assert front.observe("5") is Reaction.CLOSE
    # Restarting after a backend restart it saw (InitWait) is not a fresh start either.
    front = Handshake(Role.FRONTEND, S.CONNECTED, S.CONNECTED)
    assert front.observe("2") is Reaction.RESTART
    front.restart()
    assert not front.starting
    front.move(S.INITIALISED)
    assert front.observe("6") is Reaction.CLOSE


def test_starting_again_after_closing_waits_out_the_closed_backend() -> None:
    # Closed -> Initialising (a reconnect the driver starts itself) is a new start: the
    # backend's Closed it already saw is left over from the connection that ended.
    front = Handshake(Role.FRONTEND, S.CONNECTED, S.CONNECTED)
    assert front.observe("6") is Reaction.CLOSE
    front.move(S.CLOSED)
    front.move(S.INITIALISING)
    assert front.starting and front.reaction() is Reaction.NONE
    # After the backend's death the restarted frontend waits for the successor's state.
    front = Handshake(Role.FRONTEND, S.CONNECTED, S.CONNECTED)
    front.peer_lost()
    front.restart()
    assert front.starting
    assert front.observe("6") is Reaction.NONE  # the successor came up closed: wait


def test_eager_new_frontend_makes_a_closed_backend_start_over() -> None:
    back = Handshake(Role.BACKEND, S.CLOSED, S.CLOSED)
    assert back.observe("3") is Reaction.RESTART
    back.move(S.INIT_WAIT)
    assert back.reaction() is Reaction.CONNECT


def test_leftover_only_for_a_starting_end() -> None:
    for own in S:
        expected = {S.CLOSING, S.CLOSED} if own in (S.INITIALISING, S.INITIALISED) else set()
        assert LEFTOVER[Role.FRONTEND][own] == expected
        expected = {S.CLOSING, S.CLOSED} if own in (S.INITIALISING, S.INIT_WAIT) else set()
        assert LEFTOVER[Role.BACKEND][own] == expected


def test_a_starting_backend_waits_out_a_leftover_closed_frontend() -> None:
    back = Handshake(Role.BACKEND)
    back.restart()
    back.move(S.INIT_WAIT)
    assert back.observe("6") is Reaction.NONE      # the frontend of an earlier connection
    assert back.observe("1") is Reaction.NONE      # it restarts on our InitWait ...
    assert back.observe("3") is Reaction.CONNECT   # ... and publishes its ring
    back.move(S.CONNECTED)
    assert back.observe("5") is Reaction.CLOSE     # live since: Closing is an answer now


def test_a_restarted_backend_follows_a_frontend_closing_after_its_port_closed() -> None:
    """The frontend closed its event channel: the backend stopped trusting its Connected and
    started over at InitWait.  The frontend's Closing and Closed that follow are a move made
    since -- addressed to this backend, not left over -- so it follows them (issue 17)."""
    back = Handshake(Role.BACKEND, S.CONNECTED, S.CONNECTED)
    back.peer_lost()
    back.restart()
    back.move(S.INIT_WAIT)
    assert back.starting
    assert back.observe("5") is Reaction.CLOSE
    back.move(S.CLOSING)
    back.move(S.CLOSED)
    assert back.observe("6") is Reaction.NONE
    assert back.observe("1") is Reaction.RESTART        # and the frontend connects again
    # the same when the frontend goes to Closed at once
    back = Handshake(Role.BACKEND, S.CONNECTED, S.CONNECTED)
    back.peer_lost()
    back.restart()
    back.move(S.INIT_WAIT)
    assert back.observe("6") is Reaction.CLOSE


def test_a_leftover_closing_that_finishes_closing_stays_left_over() -> None:
    # Closing -> Closed of a frontend that was already closing when the backend started is
    # still the earlier connection's: the backend keeps waiting at InitWait for it to restart.
    back = Handshake(Role.BACKEND)
    back.restart()
    back.move(S.INIT_WAIT)
    assert back.observe("5") is Reaction.NONE
    assert back.observe("6") is Reaction.NONE
    assert back.starting
    assert back.observe("1") is Reaction.NONE
    assert back.observe("3") is Reaction.CONNECT


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
    backend_start=st.sampled_from(["initwait", "skips-initwait", "left-closed"]),
    frontend_eager=st.booleans(),
)
def test_handshake_converges_under_any_watch_coalescing(
    schedule: list[bool], backend_start: str, frontend_eager: bool
) -> None:
    """Two engines whose watches fire in any order and coalesce always end up Connected --
    also when the backend still sits at Closed from a previous connection (it stayed online)
    and a new frontend starts."""
    front, back = Handshake(Role.FRONTEND), Handshake(Role.BACKEND)
    front.move(S.INITIALISING)
    if frontend_eager:
        front.move(S.INITIALISED)  # blkif.h: allowed without waiting for InitWait
    if backend_start == "left-closed":
        back = Handshake(Role.BACKEND, S.CLOSED, S.CLOSED)
    else:
        back.move(S.INITIALISING)
        back.move(S.INITIALISED if backend_start == "skips-initwait" else S.INIT_WAIT)

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


# Moves a peer can never make: connecting again needs this side to answer the peer's restart
# (the frontend's ring published after the backend came back, or the backend's Connected after
# the frontend published), so a peer seen Closing or Closed is never next seen Connected.
IMPOSSIBLE = [
    (Role.BACKEND, S.CLOSED, S.CONNECTED),
    (Role.BACKEND, S.CLOSING, S.CONNECTED),
    (Role.BACKEND, S.CLOSED, S.RECONFIGURING),
    (Role.BACKEND, S.CLOSING, S.RECONFIGURED),
    (Role.FRONTEND, S.CLOSED, S.CONNECTED),
    (Role.FRONTEND, S.CLOSING, S.CONNECTED),
    (Role.FRONTEND, S.CLOSED, S.RECONFIGURED),
    (Role.FRONTEND, S.CONNECTED, S.INIT_WAIT),
    (Role.FRONTEND, S.CLOSED, S.INIT_WAIT),
]

# Legal jumps with skipped (coalesced) states, restarts included.
LEGAL = [
    (Role.FRONTEND, S.INITIALISING, S.CONNECTED),  # Initialised coalesced away
    (Role.BACKEND, S.INITIALISING, S.CONNECTED),  # InitWait skipped
    (Role.BACKEND, S.INIT_WAIT, S.CLOSED),
    (Role.BACKEND, S.CONNECTED, S.INIT_WAIT),  # restarted, its Closing/Closed coalesced
    (Role.BACKEND, S.CLOSED, S.INIT_WAIT),  # blkback's reconnect
    (Role.BACKEND, S.CONNECTED, S.INITIALISED),  # restarted, skipped InitWait
    (Role.FRONTEND, S.CONNECTED, S.INITIALISING),  # Handshake.restart of a frontend
    # Linux's resume: xenbus_dev_resume resets the state to Initialising in memory only and
    # the driver's resume publishes its ring again, so the store goes Connected -> Initialised.
    (Role.FRONTEND, S.CONNECTED, S.INITIALISED),
    (Role.FRONTEND, S.CLOSED, S.INITIALISED),  # restarted and published at once
    (Role.FRONTEND, S.CONNECTED, S.RECONFIGURED),
]


def _observer(peer_role: Role, seen: XenbusState) -> Handshake:
    hs = Handshake(peer_role.peer)
    hs.observe(seen)
    return hs


@pytest.mark.parametrize(("peer_role", "old", "new"), IMPOSSIBLE)
def test_impossible_peer_jumps_are_refused(
    peer_role: Role, old: XenbusState, new: XenbusState
) -> None:
    hs = _observer(peer_role, old)
    with pytest.raises(RemoteProtocolError, match="can never do"):
        hs.observe(new.to_wire())
    assert hs.error is not None


@pytest.mark.parametrize(("peer_role", "old", "new"), LEGAL)
def test_skipped_states_and_restarts_are_accepted(
    peer_role: Role, old: XenbusState, new: XenbusState
) -> None:
    hs = _observer(peer_role, old)
    hs.observe(new.to_wire())
    assert hs.error is None


@pytest.mark.parametrize(("peer_role", "old", "new"), IMPOSSIBLE)
def test_after_peer_lost_the_successor_may_be_anywhere(
    peer_role: Role, old: XenbusState, new: XenbusState
) -> None:
    # The dead peer's successor may already have connected to our still-published ring.
    hs = _observer(peer_role, old)
    hs.peer_lost()
    assert hs.observe(old.to_wire()) is Reaction.NONE  # still the dead peer's node
    hs.observe(new.to_wire())
    assert hs.error is None
    assert not hs.peer_stale


def _apply_any(hs: Handshake, reaction: Reaction) -> None:
    """`_apply` plus closing."""
    if reaction is Reaction.CLOSE:
        for to in (S.CLOSING, S.CLOSED):
            if hs.can_move(to):
                hs.move(to)
    else:
        _apply(hs, reaction)


def _fresh(role: Role) -> Handshake:
    hs = Handshake(role)
    hs.move(S.INITIALISING)
    if role is Role.BACKEND:
        hs.move(S.INIT_WAIT)
    return hs


@settings(max_examples=400, deadline=None)
@given(
    actions=st.lists(
        st.sampled_from(["front", "back", "kill-front", "kill-back", "close-front",
                         "close-back"]),
        max_size=80,
    ),
    detected=st.lists(st.booleans(), min_size=80, max_size=80),
    final_detected=st.booleans(),
    final_schedule=st.lists(st.booleans(), max_size=40),
)
def test_restarts_and_closes_in_any_order_never_look_impossible(
    actions: list[str],
    detected: list[bool],
    final_detected: bool,
    final_schedule: list[bool],
) -> None:
    """Either end may close, or die and come back as a new process (noticed by the survivor or
    not); with watches firing in any order, no legitimate sequence is taken for a protocol
    violation.  Whatever happened, a new frontend that starts next (the old one gone, noticed
    or not; the backend maybe left at Closed) ends up Connected with the backend."""
    front, back = _fresh(Role.FRONTEND), _fresh(Role.BACKEND)
    for i, action in enumerate(actions):
        if action == "front":
            _apply_any(front, front.observe(back.state.to_wire()))
        elif action == "back":
            _apply_any(back, back.observe(front.state.to_wire()))
        elif action == "kill-front":
            front = _fresh(Role.FRONTEND)
            if detected[i]:
                back.peer_lost()
                back.restart()
                back.move(S.INIT_WAIT)
        elif action == "kill-back":
            back = _fresh(Role.BACKEND)
            if detected[i]:
                front.peer_lost()
                front.restart()
        elif action == "close-front":
            _apply_any(front, Reaction.CLOSE)
        else:
            _apply_any(back, Reaction.CLOSE)
    assert front.error is None and back.error is None
    # A new frontend session.
    front = _fresh(Role.FRONTEND)
    if final_detected:
        back.peer_lost()
        back.restart()
        back.move(S.INIT_WAIT)
    if back.peer_stale:
        # The stale rule waits for the dead frontend's node to change, so the backend must see
        # the successor's Initialising at least once: if a watch coalesced it away and the
        # successor's next state equals the dead one's (Initialised), the backend keeps
        # waiting -- a limit of `peer_lost`, not of the leftover-Closed handling tested here.
        _apply_any(back, back.observe(front.state.to_wire()))
    for front_turn in final_schedule:
        if front_turn:
            _apply_any(front, front.observe(back.state.to_wire()))
        else:
            _apply_any(back, back.observe(front.state.to_wire()))
    for _ in range(10):
        before = (front.state, back.state)
        _apply_any(front, front.observe(back.state.to_wire()))
        _apply_any(back, back.observe(front.state.to_wire()))
        if (front.state, back.state) == before:
            break
    assert (front.state, back.state) == (S.CONNECTED, S.CONNECTED)
