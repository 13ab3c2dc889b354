"""A TCP exchange both ways over one connection, checked by SHA-256 at both ends.

Shared by the two halves of tests/xen/test_interop_net.py: the domU serves (`serve_once`),
dom0 connects (`exchange`).  The client sends a length (8 bytes, big-endian) and that many
bytes, then reads the server's length and bytes; each side reports what it sent and what it
got as `Digest`s, and `mismatches` compares the two reports.  Plain blocking sockets and the
standard library only: the domU runs this as a script.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import asdict, dataclass

__all__ = ("Digest", "Report", "exchange", "mismatches", "serve_once")

CHUNK = 1 << 16


@dataclass(frozen=True)
class Digest:
    """Length and SHA-256 of a byte stream."""

    length: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class Report:
    """One end's account of an exchange."""

    sent: Digest
    got: Digest

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Report:
        raw = json.loads(text)
        return cls(Digest(**raw["sent"]), Digest(**raw["got"]))


def mismatches(client: Report, server: Report) -> list[str]:
    """What the two ends disagree on (empty: each got exactly what the other sent)."""
    problems = []
    if server.got != client.sent:
        problems.append(f"client -> server: sent {client.sent}, the server got {server.got}")
    if client.got != server.sent:
        problems.append(f"server -> client: sent {server.sent}, the client got {client.got}")
    return problems


def _recv_exactly(sock: socket.socket, length: int) -> bytes:
    parts = []
    left = length
    while left:
        piece = sock.recv(min(CHUNK, left))
        if not piece:
            break                       # short: the digest shows it
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _send_framed(sock: socket.socket, data: bytes) -> None:
    sock.sendall(len(data).to_bytes(8, "big") + data)


def _recv_framed(sock: socket.socket) -> bytes:
    header = _recv_exactly(sock, 8)
    if len(header) != 8:
        return b""
    return _recv_exactly(sock, int.from_bytes(header, "big"))


def serve_once(listener: socket.socket, reply: bytes, timeout: float) -> Report:
    """Accept one connection on `listener`: receive the client's bytes, then send `reply`."""
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(timeout)
        got = _recv_framed(conn)
        _send_framed(conn, reply)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)                    # wait for the client's close
    return Report(Digest.of(reply), Digest.of(got))


def exchange(address: tuple[str, int], payload: bytes, timeout: float) -> Report:
    """Connect to `address`, send `payload`, receive the server's bytes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(timeout)
        _send_framed(sock, payload)
        got = _recv_framed(sock)
    return Report(Digest.of(payload), Digest.of(got))
