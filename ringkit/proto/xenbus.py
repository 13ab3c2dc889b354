"""The XenbusState handshake of a split device, as data.

Theory of operation
-------------------
Each end of a split device publishes its state as a decimal string in ``<its dir>/state``
(xen/include/public/io/xenbus.h) and watches the other end's.  io/blkif.h draws the dance::

    frontend                     backend
    Initialising                 Initialising -> InitWait   (features published)
    Initialising -> Initialised  (ring + event channel published)
                                 InitWait -> Connected      (ring mapped)
    Initialised -> Connected
    ... Closing -> Closed on either side when unplugging or on error

Two tables encode it:

* `MOVES[role][state]` -- the states a role may move its *own* node to from `state`.  A driver
  that asks for anything else gets `LocalProtocolError`.  Every state may fall to Closing or
  Closed (errors and unplug), Closed may go back to Initialising (a reconnect), and any state may
  start over at Initialising when the peer died or restarted (`Handshake.restart`).
* `REACTIONS[role][peer_state][own_state]` -- what a role should do when it sees the peer in
  `peer_state` while it is itself in `own_state`: nothing, set up its side of the connection,
  finish connecting, close, restart after a peer restart, or give up because the peer is gone.
* `LEFTOVER[role][own_state]` -- the peer states a role that is *starting* (it wrote
  Initialising and has not seen the peer in a live state since) takes for what an earlier
  connection left behind, and waits out instead of reacting to.  A frontend that starts while
  its backend still says Closed (or Closing) from the previous connection -- a backend that
  stays online, as Linux's blkback does with ``online`` = 1 -- keeps Initialising and waits
  for the backend to answer with InitWait (Linux's xenbus_reset_frontend does the same at boot
  and after kexec), instead of closing: the backend only starts over when it sees the frontend
  at Initialising (blkback's "prepare for reconnect"), so a frontend that closed there would
  leave both ends at Closed for good.  A frontend that has seen the backend live since it
  started still closes when the backend goes Closing or Closed: that is an answer to it.  A
  starting backend (Initialising, InitWait) likewise waits out a frontend still Closing or
  Closed, at InitWait -- which a frontend at Closed answers by connecting.  What makes a
  Closing or Closed left over, for a backend, is that the frontend was already there (or
  already closing) when the backend started: a frontend seen *moving* to Closing or Closed from
  a live state since then -- even a state the backend stopped trusting because the frontend's
  port closed (`Handshake.peer_lost`) -- is closing on this backend, which answers it, as
  Linux's blkback answers a frontend's Closing and Closed from any state (Linux's
  xenbus_reset_frontend waits for exactly those answers).  A starting frontend keeps waiting
  instead: its backend offers InitWait again in any case, so waiting costs nothing there.

Watches coalesce and blkif.h lets either side skip states (a frontend may go to Initialised
without waiting for InitWait; a backend may bypass InitWait), so a peer's move from A to B is
accepted whenever B is *reachable* from A (`REACHABLE`): along the peer's `MOVES` within one
connection, or by starting over -- which a peer may do from any state, but which only takes it
as far as it gets without an answer from this side (Initialising, a frontend's Initialised, a
backend's InitWait, or closing).  The reactions say to do the work of any skipped state as
well.  Values that are not a decimal state 0..8 and moves the peer's role can never make (a
frontend in InitWait; Closing or Closed -> Connected, Reconfiguring, Reconfigured) are
`RemoteProtocolError`.  Such an error ends the *connection*, never the end: the `Handshake` is
then `broken` -- every later value of the peer's node is ignored (Reaction.NONE, no second
error) until the peer starts over (`PEER_RESTARTS`: a frontend back at Initialising or
Initialised, a backend back at Initialising, InitWait or Initialised), which is accepted as a
new connection.  The caller closes its side meanwhile (Closing -> Closed), as Linux's
``xenbus_dev_fatal`` does.  After `Handshake.peer_lost` the next new state is accepted whatever
it is: it was written by the peer's successor.

`Handshake` is the sans-I/O engine over these tables: it never touches the store.  The caller
writes what `move()` returns to its own ``state`` node and feeds what it reads from the peer's
``state`` node (or None when the node is missing) to `observe()`, which answers a `Reaction`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import NoReturn

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = (
    "LEFTOVER",
    "MOVES",
    "PEER_RESTARTS",
    "REACHABLE",
    "REACTIONS",
    "Handshake",
    "Reaction",
    "Role",
    "XenbusState",
    "parse_state",
)


class XenbusState(enum.IntEnum):
    """``enum xenbus_state`` from xen/include/public/io/xenbus.h."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    """Early initialisation done; waiting for the peer (or hotplug scripts)."""
    INITIALISED = 3
    """Our half is published; waiting for the peer to connect."""
    CONNECTED = 4
    CLOSING = 5
    """Being closed because of an error or an unplug."""
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @property
    def xen_name(self) -> str:
        """The C enumerator's name, e.g. ``XenbusStateInitWait``."""
        return "XenbusState" + "".join(part.capitalize() for part in self.name.split("_"))

    def to_wire(self) -> str:
        """The decimal string stored in a ``state`` node."""
        return str(int(self))


class Role(enum.Enum):
    """Which end of the split device a handshake belongs to."""

    FRONTEND = "frontend"
    BACKEND = "backend"

    @property
    def peer(self) -> Role:
        """The other end."""
        return Role.BACKEND if self is Role.FRONTEND else Role.FRONTEND


class Reaction(enum.Enum):
    """What to do after observing the peer's state (see `REACTIONS`)."""

    NONE = "none"
    """Nothing yet; keep watching."""
    CONNECT = "connect"
    """Do this side's connection work.  Frontend: read the backend's features, share the ring,
    publish ring-ref / event-channel, move to Initialised.  Backend: read the frontend's ring
    details, map the ring, bind the event channel, move to Connected."""
    FINISH = "finish"
    """Frontend only: the backend is Connected; read its device properties, move to Connected."""
    CLOSE = "close"
    """The peer is closing or closed: stop using the ring, unmap, move to Closing then Closed."""
    RESTART = "restart"
    """The peer restarted its side: drop any old connection and start this side's half again."""
    GONE = "gone"
    """The peer's state node disappeared: tear down; the device is being removed."""


S = XenbusState
_ANY_TO_CLOSE = frozenset({S.CLOSING, S.CLOSED})

_FRONTEND_MOVES: dict[XenbusState, frozenset[XenbusState]] = {
    S.UNKNOWN: frozenset({S.INITIALISING}) | _ANY_TO_CLOSE,
    S.INITIALISING: frozenset({S.INITIALISED, S.CONNECTED}) | _ANY_TO_CLOSE,
    S.INIT_WAIT: _ANY_TO_CLOSE,
    S.INITIALISED: frozenset({S.CONNECTED}) | _ANY_TO_CLOSE,
    S.CONNECTED: frozenset({S.RECONFIGURING}) | _ANY_TO_CLOSE,
    S.CLOSING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset({S.INITIALISING}),
    S.RECONFIGURING: frozenset({S.RECONFIGURED}) | _ANY_TO_CLOSE,
    S.RECONFIGURED: frozenset({S.CONNECTED}) | _ANY_TO_CLOSE,
}

_BACKEND_MOVES: dict[XenbusState, frozenset[XenbusState]] = {
    S.UNKNOWN: frozenset({S.INITIALISING}) | _ANY_TO_CLOSE,
    S.INITIALISING: frozenset({S.INIT_WAIT, S.INITIALISED, S.CONNECTED}) | _ANY_TO_CLOSE,
    S.INIT_WAIT: frozenset({S.INITIALISED, S.CONNECTED}) | _ANY_TO_CLOSE,
    S.INITIALISED: frozenset({S.CONNECTED}) | _ANY_TO_CLOSE,
    S.CONNECTED: frozenset({S.RECONFIGURING}) | _ANY_TO_CLOSE,
    S.CLOSING: frozenset({S.CLOSED}),
    # Linux's blkback goes straight from Closed to InitWait when the frontend comes back.
    S.CLOSED: frozenset({S.INITIALISING, S.INIT_WAIT}),
    S.RECONFIGURING: frozenset({S.RECONFIGURED}) | _ANY_TO_CLOSE,
    S.RECONFIGURED: frozenset({S.CONNECTED}) | _ANY_TO_CLOSE,
}

MOVES: Mapping[Role, Mapping[XenbusState, frozenset[XenbusState]]] = MappingProxyType(
    {
        Role.FRONTEND: MappingProxyType(_FRONTEND_MOVES),
        Role.BACKEND: MappingProxyType(_BACKEND_MOVES),
    }
)
"""`MOVES[role][state]`: the states `role` may write to its own node while in `state`."""


_RESTART_TARGETS: Mapping[Role, frozenset[XenbusState]] = MappingProxyType(
    {
        # A frontend starting over (a new process, Linux's resume, `Handshake.restart`) writes
        # Initialising and may publish its ring (Initialised) without waiting for the backend,
        # as blkif.h allows; anything further needs the backend to have answered.
        Role.FRONTEND: frozenset({S.INITIALISING, S.INITIALISED}) | _ANY_TO_CLOSE,
        # A backend starting over advertises (InitWait) or skips InitWait (Initialised) on its
        # own; Connected needs a frontend that published its ring after the restart.
        Role.BACKEND: frozenset({S.INITIALISING, S.INIT_WAIT, S.INITIALISED}) | _ANY_TO_CLOSE,
    }
)
"""`_RESTART_TARGETS[role]`: the states a peer of `role` that started over (from any state,
Closed included) can reach before it needs an answer from this side."""

PEER_RESTARTS: Mapping[Role, frozenset[XenbusState]] = MappingProxyType(
    {role: targets - _ANY_TO_CLOSE for role, targets in _RESTART_TARGETS.items()}
)
"""`PEER_RESTARTS[role]`: the states that show a peer of `role` starting a new connection.  A
`Handshake` broken by that peer waits for one of them before it reacts to the peer again."""


def _reachable(role: Role) -> dict[XenbusState, frozenset[XenbusState]]:
    moves = MOVES[role]
    closure: dict[XenbusState, frozenset[XenbusState]] = {}
    for start in XenbusState:
        # Within one connection: every move but the ones out of Closed, which start a new
        # connection (Closed -> Initialising, blkback's Closed -> InitWait) ...
        seen: set[XenbusState] = {start}
        todo = [start]
        while todo:
            state = todo.pop()
            if state is S.CLOSED:
                continue
            for nxt in moves[state]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        # ... plus starting over, which any state may do (`Handshake.restart`), but only as far
        # as the restarted peer gets without this side: a watch that coalesced a restart never
        # hides the state this side had to answer (e.g. the frontend's Initialised before the
        # backend's Connected).
        closure[start] = frozenset(seen | _RESTART_TARGETS[role])
    return closure


REACHABLE: Mapping[Role, Mapping[XenbusState, frozenset[XenbusState]]] = MappingProxyType(
    {role: MappingProxyType(_reachable(role)) for role in Role}
)
"""`REACHABLE[role][a]`: every state `role` can be observed in after `a` (itself included),
given that watches coalesce, states may be skipped and a peer may start over.  A peer observed
outside this set broke the protocol -- e.g. Closing or Closed -> Connected or Reconfiguring, or
a frontend in InitWait -- unless `Handshake.peer_lost` said the peer died: its successor is
a new process that may have got anywhere."""


def _table(
    rows: Mapping[XenbusState, Mapping[XenbusState, Reaction]],
) -> Mapping[XenbusState, Mapping[XenbusState, Reaction]]:
    full = {
        peer: MappingProxyType({own: rows.get(peer, {}).get(own, Reaction.NONE) for own in S})
        for peer in S
    }
    return MappingProxyType(full)


_NOT_YET_CONNECTED = (S.UNKNOWN, S.INITIALISING, S.INIT_WAIT, S.INITIALISED)
_LIVE = (*_NOT_YET_CONNECTED, S.CONNECTED, S.RECONFIGURING, S.RECONFIGURED)


def _close_rows() -> dict[XenbusState, dict[XenbusState, Reaction]]:
    # The peer closing, closed or gone tears down every live or half-closed state of ours.
    return {
        S.CLOSING: {own: Reaction.CLOSE for own in (*_LIVE, S.CLOSING)},
        S.CLOSED: {own: Reaction.CLOSE for own in (*_LIVE, S.CLOSING)},
        S.UNKNOWN: {own: Reaction.GONE for own in S},
    }


def _frontend_reactions() -> dict[XenbusState, dict[XenbusState, Reaction]]:
    rows = _close_rows()
    # The backend is ready for our ring (InitWait), or skipped InitWait (Initialised: defaults).
    for ready in (S.INIT_WAIT, S.INITIALISED):
        rows[ready] = {
            S.UNKNOWN: Reaction.CONNECT,
            S.INITIALISING: Reaction.CONNECT,
            # We were connected or closed and the backend is back at the start: it restarted.
            S.CONNECTED: Reaction.RESTART,
            S.CLOSED: Reaction.RESTART,
        }
    rows[S.CONNECTED] = {
        # The backend raced ahead (we skipped the InitWait we would have reacted to).
        S.UNKNOWN: Reaction.CONNECT,
        S.INITIALISING: Reaction.CONNECT,
        S.INITIALISED: Reaction.FINISH,
        S.RECONFIGURED: Reaction.FINISH,
    }
    # A backend seen back at Initialising after we connected has restarted.
    rows[S.INITIALISING] = {S.CONNECTED: Reaction.RESTART}
    return rows


def _backend_reactions() -> dict[XenbusState, dict[XenbusState, Reaction]]:
    rows = _close_rows()
    # The frontend published its ring: connect.
    for ready in (S.INITIALISED, S.CONNECTED):
        rows[ready] = {own: Reaction.CONNECT for own in _NOT_YET_CONNECTED}
    # The frontend came back to the start after we closed (blkback's "prepare for reconnect":
    # Closed -> InitWait, features advertised again), or restarted while we were connected.
    rows[S.INITIALISING] = {S.CLOSED: Reaction.RESTART, S.CONNECTED: Reaction.RESTART}
    # A new frontend that published its ring at once (blkif.h allows it; Linux's resume does
    # it) while we sat at Closed: blkback connects from any state but Connected; here that is
    # starting over first (InitWait), after which the ring is mapped as usual.
    rows[S.INITIALISED][S.CLOSED] = Reaction.RESTART
    return rows


REACTIONS: Mapping[Role, Mapping[XenbusState, Mapping[XenbusState, Reaction]]] = (
    MappingProxyType(
        {
            Role.FRONTEND: _table(_frontend_reactions()),
            Role.BACKEND: _table(_backend_reactions()),
        }
    )
)
"""`REACTIONS[role][peer_state][own_state]`: what `role` does on seeing the peer in
`peer_state`.  Missing combinations mean `Reaction.NONE`."""


_STARTING_OWN = frozenset({S.INITIALISING, S.INITIALISED})
_STARTING_BACKEND = frozenset({S.INITIALISING, S.INIT_WAIT})

LEFTOVER: Mapping[Role, Mapping[XenbusState, frozenset[XenbusState]]] = MappingProxyType(
    {
        # A starting frontend waits out a backend still Closing or Closed from before.
        Role.FRONTEND: MappingProxyType(
            {own: _ANY_TO_CLOSE if own in _STARTING_OWN else frozenset() for own in S}
        ),
        # A starting backend (it wrote InitWait and has seen no live frontend since) waits
        # out a frontend still Closing or Closed from before, at InitWait: a ringkit or Linux
        # frontend at Closed answers InitWait by connecting.  Closing on it, as blkback does,
        # raced a frontend restarting on our InitWait -- it took our Closing for an answer,
        # closed, and both ends stayed Closed for good.
        Role.BACKEND: MappingProxyType(
            {own: _ANY_TO_CLOSE if own in _STARTING_BACKEND else frozenset() for own in S}
        ),
    }
)
"""`LEFTOVER[role][own_state]`: the peer states that `role`, while *starting* in `own_state`
(`Handshake.starting`: it has not seen the peer in a live state since it wrote Initialising),
takes for the remains of an earlier connection: it waits (Reaction.NONE) for the peer to start
over instead of doing what `REACTIONS` says."""

_NOT_LIVE = frozenset({S.UNKNOWN}) | _ANY_TO_CLOSE

_ANSWERED_ALREADY: Mapping[Role, Mapping[XenbusState, frozenset[XenbusState]]] = (
    MappingProxyType(
        {
            # A frontend whose ring is published (Initialised) has already given a backend
            # that starts over all it needs: such a backend may go from Closed (or anywhere)
            # to Connected without waiting for us again, as blkback connects a frontend that
            # published its ring while it was Closed.
            Role.FRONTEND: MappingProxyType({S.INITIALISED: frozenset({S.CONNECTED})}),
            Role.BACKEND: MappingProxyType({}),
        }
    )
)
"""`_ANSWERED_ALREADY[role][own_state]`: peer states that are reachable from anywhere while
`role` sits in `own_state`, because what the peer needs from us is already published."""


def parse_state(raw: str | bytes | None) -> XenbusState:
    """Parse a peer's ``state`` node.  None (node missing) or an empty value is UNKNOWN.

    Raises:
        RemoteProtocolError: not a decimal number 0..8.
    """
    if raw is None:
        return S.UNKNOWN
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"xenbus state {raw!r} is not ASCII") from None
    text = raw.strip("\0")
    if text == "":
        return S.UNKNOWN
    if not (text.isascii() and text.isdigit()) or len(text) > 2:
        raise RemoteProtocolError(f"xenbus state {raw!r} is not a decimal 0..8")
    value = int(text)
    if value > max(S):
        raise RemoteProtocolError(f"xenbus state {value} is out of range 0..{int(max(S))}")
    return S(value)


class Handshake:
    """One end's view of the handshake: its own state and the last state seen of the peer.

    `move()` validates this side's transitions (LocalProtocolError); `observe()` validates the
    peer's (RemoteProtocolError, after which the handshake is `broken` until the peer starts
    over) and answers the `Reaction`.
    """

    def __init__(
        self, role: Role, state: XenbusState = S.UNKNOWN, peer_state: XenbusState = S.UNKNOWN
    ) -> None:
        self.role = role
        self._state = state
        self._peer_state = peer_state
        self._peer_seen = peer_state is not S.UNKNOWN
        self._peer_stale = False
        self._starting = not self._peer_live()
        self._broken: RemoteProtocolError | None = None
        self._ahead = False

    @property
    def state(self) -> XenbusState:
        """This side's current state."""
        return self._state

    @property
    def peer_state(self) -> XenbusState:
        """The peer's last observed state (UNKNOWN before the first observation)."""
        return self._peer_state

    @property
    def peer_stale(self) -> bool:
        """Whether the peer died and its state node is not trusted until it changes."""
        return self._peer_stale

    @property
    def starting(self) -> bool:
        """Whether this side started (Initialising) and has not seen the peer in a live state
        (anything but Unknown, Closing, Closed) since: a peer Closing or Closed now is left
        over from an earlier connection (see `LEFTOVER`), not an answer to this one."""
        return self._starting

    def _peer_live(self) -> bool:
        return self._peer_seen and not self._peer_stale and self._peer_state not in _NOT_LIVE

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer's violation that broke the current connection, or None.  Cleared when the
        peer starts over (see `PEER_RESTARTS`)."""
        return self._broken

    @property
    def broken(self) -> bool:
        """Whether the peer broke the handshake and has not started over since: its node is
        ignored meanwhile (`observe` answers Reaction.NONE)."""
        return self._broken is not None

    @property
    def ahead(self) -> bool:
        """Whether this frontend said Connected before the backend did (`connect_ahead`) and
        has not taken in the backend's Connected since (`caught_up`)."""
        return self._ahead

    def connect_ahead(self) -> XenbusState:
        """Move this frontend to Connected without waiting for the backend's Connected, as
        netif's frontends do: Linux's xen-netfront goes from Initialising (its rings published)
        straight to Connected, and xen-netback connects only once it sees that.  Until the
        backend is seen Connected, its not-yet-connected states (Initialising, InitWait,
        Initialised) ask for nothing -- rather than a restart, which they would mean to a
        frontend that had seen the backend Connected -- and its Connected then answers
        Reaction.FINISH, which the caller acknowledges with `caught_up`.  Returns the state to
        write.

        Raises:
            LocalProtocolError: not a frontend, or Connected is not a move from here.
        """
        if self.role is not Role.FRONTEND:
            raise LocalProtocolError("only a frontend connects ahead of its peer")
        self.move(S.CONNECTED)
        self._ahead = True
        return S.CONNECTED

    def caught_up(self) -> None:
        """The backend's Connected after `connect_ahead` has been taken in: from now on the
        tables apply as to any connected frontend."""
        self._ahead = False

    def can_move(self, to: XenbusState) -> bool:
        """Whether `move(to)` would be accepted."""
        return to == self._state or to in MOVES[self.role][self._state]

    def move(self, to: XenbusState) -> XenbusState:
        """Move this side to `to` (writing the same state again is a no-op) and return it; the
        caller writes ``to.to_wire()`` to its ``state`` node.

        Raises:
            LocalProtocolError: the role may not go from its current state to `to`.
        """
        to = XenbusState(to)
        if not self.can_move(to):
            allowed = ", ".join(s.xen_name for s in sorted(MOVES[self.role][self._state]))
            raise LocalProtocolError(
                f"{self.role.value} may not move from {self._state.xen_name} to {to.xen_name}"
                f" (allowed: {allowed})"
            )
        if to is S.INITIALISING and self._state is not S.INITIALISING:
            self._starting = not self._peer_live()
        if to is not S.CONNECTED:
            self._ahead = False
        self._state = to
        return to

    def restart(self) -> XenbusState:
        """Start this side over at Initialising, from any state, as a freshly started process
        would; used after the peer died or restarted.  Writing Closed instead would tell a
        restarted peer to close.  Returns the state to write."""
        self._state = S.INITIALISING
        self._starting = not self._peer_live()
        self._ahead = False
        return self._state

    def peer_lost(self) -> None:
        """Note that the peer's process died (unmap-notify, its event channel closed) without
        updating its ``state`` node: that node is stale, so the reactions wait (NONE) until the
        peer -- restarted -- writes a different state, which is accepted whatever it is (the
        successor may have got anywhere, e.g. connected to our still-published ring).  Without
        this, a frontend would "connect" to a dead backend whose node still says Connected.
        One exception: a stale Initialising still brings a Closed backend back to InitWait,
        which is harmless (and a successor writing the same value would go unnoticed)."""
        self._peer_stale = self._peer_seen

    def observe(self, raw: str | bytes | XenbusState | None) -> Reaction:
        """Take in the peer's ``state`` node value (None: the node is missing) and answer what
        this side should do now.

        While `broken`, values are ignored (Reaction.NONE) until the peer starts over or its
        node disappears.

        Raises:
            RemoteProtocolError: a malformed value, or a move the peer's role can never make;
                the handshake is `broken` from then on.
        """
        if self._broken is not None:
            return self._observe_broken(raw)
        new = raw if isinstance(raw, XenbusState) else self._parse(raw)
        old = self._peer_state
        if (
            self._peer_seen
            and not self._peer_stale
            and new is not S.UNKNOWN
            and new not in REACHABLE[self.role.peer][old]
            and new not in _ANSWERED_ALREADY[self.role].get(self._state, ())
        ):
            self._fail(
                f"{self.role.peer.value} moved from {old.xen_name} to {new.xen_name}, which its "
                "role can never do"
            )
        if self._peer_stale and new == old:
            return self.reaction()
        self._peer_stale = False
        if new is not S.UNKNOWN:
            self._peer_seen = True
        elif not self._peer_seen:
            # The peer has not written its node yet: nothing to react to.
            return Reaction.NONE
        self._peer_state = new
        if new not in _NOT_LIVE or (self.role is Role.BACKEND and new in _ANY_TO_CLOSE
                                    and old not in _NOT_LIVE):
            # A live peer; or, for a backend, a frontend seen moving from a live state (stale
            # or not) to Closing or Closed since we started: that close is addressed to us.
            self._starting = False
        return self.reaction()

    def reaction(self) -> Reaction:
        """The reaction for the current (own, peer) pair; call again after each own move."""
        if not self._peer_seen or self._broken is not None:
            return Reaction.NONE
        if self._peer_stale and self._peer_state is not S.INITIALISING:
            # A dead peer's Initialising asks for nothing but our InitWait, which is harmless
            # to give (a successor that writes the same value would otherwise go unnoticed);
            # any other state of it is not acted on.
            return Reaction.NONE
        if self._starting and self._peer_state in LEFTOVER[self.role][self._state]:
            return Reaction.NONE
        if self._ahead and self._state is S.CONNECTED:
            if self._peer_state is S.CONNECTED:
                return Reaction.FINISH
            if self._peer_state in (S.INITIALISING, S.INIT_WAIT, S.INITIALISED):
                return Reaction.NONE
        return REACTIONS[self.role][self._peer_state][self._state]

    def _parse(self, raw: str | bytes | None) -> XenbusState:
        try:
            return parse_state(raw)
        except RemoteProtocolError as exc:
            self._fail(str(exc))

    def _observe_broken(self, raw: str | bytes | XenbusState | None) -> Reaction:
        """`observe` while broken: wait for the peer to start over (or to vanish)."""
        if isinstance(raw, XenbusState):
            new = raw
        else:
            try:
                new = parse_state(raw)
            except RemoteProtocolError:
                return Reaction.NONE  # more garbage: already answered
        if new is S.UNKNOWN or new in PEER_RESTARTS[self.role.peer]:
            self._broken = None
            self._peer_stale = False
            self._peer_state = new
            if new is not S.UNKNOWN:
                self._peer_seen = True
                self._starting = False
            return self.reaction()
        return Reaction.NONE

    def _fail(self, message: str) -> NoReturn:
        self._broken = RemoteProtocolError(message)
        raise self._broken
