"""The embedded broker's fences and caps (issue 10 finding 9), over real sockets.

Each cap is hit by one offending client; the test then shows that the
offender (and only it) was refused or closed, that the broker's own count of
what it holds stays under the cap, and that a well-behaved client still
works. Waits are bounded polls on the event itself, never fixed sleeps,
except where the passage of time is what is tested (keep-alive).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import waiting
from trustfleet_server import brokerconfig
from trustfleet_server.broker import EmbeddedBroker
from trustfleet_server.broker import packets as p
from trustfleet_server.broker.embedded import is_loopback

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 5.0
REPO = Path(__file__).resolve().parents[1]


def wait_for(predicate, what: str, limit: float = TIMEOUT):
    return waiting.wait_for(predicate, what, limit, step=0.01)


def recv_packet(sock: socket.socket) -> tuple[int, bytes]:
    """(first byte, body) of the next packet; (-1, b"") if the broker closed."""
    sock.settimeout(TIMEOUT)
    try:
        head = sock.recv(1)
        if not head:
            return -1, b""
        length, shift = 0, 0
        while True:
            byte = sock.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return -1, b""
            body += chunk
        return head[0], body
    except (ConnectionResetError, BrokenPipeError):
        return -1, b""


def connect(port: int, version: int = 4, **kwargs) -> tuple[socket.socket, bytes]:
    """A raw socket that sent CONNECT; returns it with the CONNACK body (b"" if closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(p.Connect(f"raw-{uuid.uuid4().hex[:8]}", version, **kwargs).encode())
    first, body = recv_packet(sock)
    return sock, (body if first == 0x20 else b"")


def connected(port: int, version: int = 4, **kwargs) -> socket.socket:
    sock, ack = connect(port, version, **kwargs)
    assert ack[1:2] == b"\x00", ack
    return sock


def is_closed(sock: socket.socket) -> bool:
    sock.settimeout(0.02)
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def round_trip(port: int, version: int = 4) -> None:
    """A normal client subscribes, publishes QoS 1 and gets its message back."""
    sock = connected(port, version)
    topic = f"ok/{uuid.uuid4().hex[:8]}"
    sock.sendall(p.Subscribe(1, [(topic, p.SubOptions(1))]).encode(version))
    assert recv_packet(sock)[0] == 0x90
    sock.sendall(p.Publish(topic, b"fine", 1, packet_id=2).encode(version))
    seen = set()
    while len(seen) < 2:
        first, body = recv_packet(sock)
        assert first != -1, "normal client was closed"
        seen.add(first & 0xF0)
    assert seen == {0x30, 0x40}
    sock.sendall(p.Disconnect().encode(version))
    sock.close()


def test_refuses_to_listen_beyond_loopback_unless_allowed():
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host=None)
    with EmbeddedBroker(host="0.0.0.0", allow_remote=True) as broker:
        round_trip(broker.port)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", None, "10.1.2.3", "192.0.2.1", "no-such-host.invalid"):
        assert not is_loopback(host), host


def test_cli_refuses_a_public_address_in_one_line():
    run = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "broker", "run",
                          "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "--allow-remote" in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    helptext = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "broker", "run",
                               "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "demos and tests" in helptext.stdout
    for option in ("--allow-remote", "--max-connections", "--max-partial-bytes",
                   "--max-retained", "--max-retained-bytes", "--max-keepalive",
                   "--password-file"):
        assert option in helptext.stdout


def test_connection_cap_refuses_only_the_extra_connection():
    with EmbeddedBroker(max_connections=4) as broker:
        socks = [connected(broker.port) for _ in range(3)]
        extra = socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT)
        extra.sendall(p.Connect("one-too-many").encode())
        # The fourth connection is allowed; the fifth is not.
        fifth = socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT)
        fifth.sendall(p.Connect("five").encode())
        assert recv_packet(fifth)[0] == -1
        assert recv_packet(extra)[0] == 0x20
        assert broker.broker.stats["refused_connections"] >= 1
        for sock in socks:
            sock.sendall(p.Pingreq().encode())
            assert recv_packet(sock)[0] == 0xD0
        extra.close()
        fifth.close()
        socks.pop().close()
        wait_for(lambda: len(broker.broker._conns) <= 2, "closed connections to be forgotten")
        round_trip(broker.port)
        for sock in socks:
            sock.close()


def test_partial_packet_bytes_are_capped_across_clients():
    cap = 1 << 20
    partial = 200 * 1024
    with EmbeddedBroker(max_packet=256 * 1024, max_partial_bytes=cap) as broker:
        def held() -> int:
            return broker.call(lambda: sum(c.reader.buffered() for c in broker.broker._conns))

        offenders = []
        for _ in range(10):
            sock = connected(broker.port)
            # A PUBLISH announcing 250 KiB, of which only 200 KiB ever arrive.
            head = b"\x30" + p.encode_varint(250 * 1024) + p.encode_str("big")
            sock.sendall(head + b"x" * (partial - len(head)))
            offenders.append(sock)
            wait_for(lambda s=sock: is_closed(s) or held() >= partial * (
                sum(1 for o in offenders if not is_closed(o))), "the broker to read it")
        assert held() <= cap, held()
        assert broker.broker.partial_bytes == held()
        closed = [s for s in offenders if is_closed(s)]
        assert len(closed) >= 10 - cap // partial
        assert broker.broker.stats["partial_refused"] == len(closed)
        round_trip(broker.port)
        for sock in offenders:
            sock.close()
        wait_for(lambda: broker.broker.partial_bytes == 0, "partial bytes to be released")


def test_retained_bytes_and_count_are_capped_offender_refused():
    with EmbeddedBroker(max_retained_bytes=512 * 1024, max_retained=20) as broker:
        # MQTT 5 QoS 1: the publish over the cap gets PUBACK 0x97 and is not stored.
        sock = connected(broker.port, 5)
        codes = []
        for pid in range(1, 11):
            sock.sendall(p.Publish(f"big/{pid}", b"x" * (100 * 1024), 1, True,
                                   packet_id=pid).encode(5))
            first, body = recv_packet(sock)
            assert first == 0x40, (first, body)
            codes.append(body[2] if len(body) > 2 else 0)
        assert codes[:4] == [0] * 4
        assert p.QUOTA_EXCEEDED in codes
        assert broker.broker.retained_bytes <= 512 * 1024
        # Replacing or clearing a stored topic is always allowed.
        sock.sendall(p.Publish("big/1", b"small", 1, True, packet_id=20).encode(5))
        assert recv_packet(sock) == (0x40, b"\x00\x14")
        sock.sendall(p.Publish("big/2", b"", 1, True, packet_id=21).encode(5))
        assert recv_packet(sock) == (0x40, b"\x00\x15")
        # MQTT 3.1.1 cannot refuse a publish: the offender is disconnected.
        small = connected(broker.port, 4)
        for index in range(40):
            small.sendall(p.Publish(f"many/{index}", b"y", 0, True).encode(4))
        assert wait_for(lambda: is_closed(small), "the 3.1.1 offender to be closed")
        assert broker.broker.retained_count <= 20
        assert broker.broker.stats["retained_refused"] >= 2
        # The MQTT 5 client that was refused and every other client keep working.
        sock.sendall(p.Pingreq().encode())
        assert recv_packet(sock)[0] == 0xD0
        round_trip(broker.port)
        sock.close()
        small.close()


def test_keepalive_zero_clients_get_the_server_maximum():
    with EmbeddedBroker(max_keepalive=2) as broker:
        v5, ack = connect(broker.port, 5, keepalive=0)
        props = p.decode(2, 0, ack, 5).properties
        assert props.get(p.SERVER_KEEP_ALIVE) == 2
        v311 = connected(broker.port, 4, keepalive=0)
        asks_more = connected(broker.port, 4, keepalive=600)
        busy = connected(broker.port, 4, keepalive=0)
        started = time.monotonic()
        # The idle ones are closed after 1.5 x the maximum; one that pings is not.
        while time.monotonic() - started < 4.5:
            busy.sendall(p.Pingreq().encode())
            assert recv_packet(busy)[0] == 0xD0
            time.sleep(0.2)
        for sock in (v5, v311, asks_more):
            assert wait_for(lambda s=sock: is_closed(s), "an idle client to be closed")
            sock.close()
        assert broker.broker.stats["keepalive_timeouts"] == 3
        assert not is_closed(busy)
        busy.close()


def test_password_file_from_broker_config_gates_connect(tmp_path):
    path = tmp_path / "passwords"
    ids = [brokerconfig.Identity("dev-1", "s3cret-one", brokerconfig.DEVICE),
           brokerconfig.Identity("server", "s3cret-two", brokerconfig.SERVER)]
    brokerconfig.write_password_file(path, ids, tool=None)
    with EmbeddedBroker(password_file=path) as broker:
        for version, refused in ((4, p.REFUSED_BAD_USERNAME_PASSWORD),
                                 (5, p.BAD_USERNAME_OR_PASSWORD)):
            _, ack = connect(broker.port, version)
            assert ack[1] == refused
            _, ack = connect(broker.port, version, username="dev-1", password=b"wrong")
            assert ack[1] == refused
            _, ack = connect(broker.port, version, username="nobody", password=b"s3cret-one")
            assert ack[1] == refused
            sock = connected(broker.port, version, username="dev-1", password=b"s3cret-one")
            sock.close()
        sock = connected(broker.port, 4, username="server", password=b"s3cret-two")
        sock.close()


def test_unreadable_password_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "passwords"
    bad.write_text("dev-1:plaintext\n")
    with pytest.raises(ValueError, match="passwords:1"):
        EmbeddedBroker(password_file=bad)
    with pytest.raises(ValueError, match="cannot read"):
        EmbeddedBroker(password_file=tmp_path / "missing")
