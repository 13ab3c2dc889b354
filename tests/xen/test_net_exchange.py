"""The check of the net interop test's TCP exchange (`net_exchange`), on the host: a real
exchange over loopback agrees with itself, and one corrupted byte, a short read or a swapped
direction is caught."""

from __future__ import annotations

import secrets
import socket
import threading

from net_exchange import Digest, Report, exchange, mismatches, serve_once


def test_a_loopback_exchange_matches() -> None:
    reply, payload = secrets.token_bytes(300_000), secrets.token_bytes(500_000)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        served: list[Report] = []
        thread = threading.Thread(target=lambda: served.append(serve_once(listener, reply, 30)))
        thread.start()
        client = exchange(listener.getsockname()[:2], payload, 30)
        thread.join(30)
    assert client == Report(Digest.of(payload), Digest.of(reply))
    assert mismatches(client, served[0]) == []


def test_one_corrupted_byte_is_caught() -> None:
    sent = secrets.token_bytes(4096)
    bad = bytearray(sent)
    bad[1234] ^= 0x01
    back = b"reply"
    client = Report(Digest.of(sent), Digest.of(back))
    assert len(mismatches(client, Report(Digest.of(back), Digest.of(bytes(bad))))) == 1
    assert len(mismatches(client, Report(Digest.of(back), Digest.of(sent[:-1])))) == 1
    assert len(mismatches(client, Report(Digest.of(b"other"), Digest.of(sent)))) == 1
    assert len(mismatches(client, Report(Digest.of(sent), Digest.of(back)))) == 2
    assert Report.from_json(client.to_json()) == client
