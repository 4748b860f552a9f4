"""AioClient's cheap paths that the simulator's devices use, on real brokers.

connect(subscribe=...) (CONNECT and SUBSCRIBE in one write), publish_nowait,
on_close, and the write made while a received chunk is handled (the PUBACK
of a message and the reply on_message publishes go out as one). Brokers:
the session Mosquitto and the embedded broker; topics unique per test, and
what a test retains it clears. An ack that never comes still ends in
AckTimeout (a TCP server that accepts and never answers).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from support import brokers
from trustfleet_server.broker.aioclient import AckTimeout, AioClient

TIMEOUT = 10.0


@pytest.fixture(params=["mosquitto", "embedded_broker"])
def broker(request):
    return request.getfixturevalue(request.param)


def _topic(name: str) -> str:
    return f"{brokers.unique_fleet('cli')}/{name}"


def test_connect_with_subscribe_returns_the_codes_and_gets_the_retained_message(broker):
    topic = _topic("retained")

    async def main() -> tuple:
        pub = AioClient("pub-" + topic, broker.host, broker.port, timeout=TIMEOUT)
        await pub.connect()
        await pub.publish(topic, b"kept", True, 1)
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        sub = AioClient("sub-" + topic, broker.host, broker.port, timeout=TIMEOUT,
                        on_message=lambda t, p, r: got.done() or got.set_result((t, p, r)))
        codes = await sub.connect(subscribe=[(topic, 1), (topic + "/other", 0)])
        message = await asyncio.wait_for(got, TIMEOUT)
        await pub.publish(topic, b"", True, 1)
        await sub.disconnect()
        await pub.disconnect()
        return codes, message

    codes, message = asyncio.run(main())
    assert codes == [1, 0]
    assert message == (topic, b"kept", True)


def test_publish_nowait_arrives_in_order_and_on_close_fires_once(broker):
    topic = _topic("nowait")

    async def main() -> tuple:
        seen: list = []
        done = asyncio.Event()

        def on_message(t, p, r):
            seen.append(p)
            if len(seen) == 20:
                done.set()

        sub = AioClient("sub-" + topic, broker.host, broker.port, timeout=TIMEOUT, on_message=on_message)
        await sub.connect(subscribe=[(topic, 1)])
        closes: list = []
        pub = AioClient("pub-" + topic, broker.host, broker.port, timeout=TIMEOUT,
                        on_close=lambda: closes.append("pub"))
        await pub.connect()
        for i in range(20):
            pub.publish_nowait(topic, b"%d" % i, False, i % 2)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        pub.abort()
        await asyncio.sleep(0.05)
        pub.abort()   # already closed: no second callback
        await asyncio.sleep(0.05)
        await sub.disconnect()
        return seen, closes

    seen, closes = asyncio.run(main())
    assert seen == [b"%d" % i for i in range(20)]
    assert closes == ["pub"]


def test_the_puback_and_the_reply_to_a_message_go_out_in_one_write(broker):
    """What on_message publishes while its message is handled leaves with that message's PUBACK."""
    topic = _topic("cork")

    async def main() -> tuple:
        writes: list = []
        replies: list = []
        got_reply = asyncio.Event()
        device: AioClient | None = None

        def on_message(t, p, r):
            device.publish_nowait(topic + "/reply", b"re:" + p, False, 1)

        device = AioClient("dev-" + topic, broker.host, broker.port, timeout=TIMEOUT, on_message=on_message)
        await device.connect(subscribe=[(topic, 1)])
        transport = device._transport
        real_write = transport.write
        transport.write = lambda data: (writes.append(bytes(data)), real_write(data))[1]
        watcher = AioClient("watch-" + topic, broker.host, broker.port, timeout=TIMEOUT,
                            on_message=lambda t, p, r: (replies.append(p), got_reply.set()))
        await watcher.connect(subscribe=[(topic + "/reply", 1)])
        pub = AioClient("pub-" + topic, broker.host, broker.port, timeout=TIMEOUT)
        await pub.connect()
        await pub.publish(topic, b"hello", False, 1)
        await asyncio.wait_for(got_reply.wait(), TIMEOUT)
        transport.write = real_write
        for c in (pub, watcher, device):
            await c.disconnect()
        return writes, replies

    writes, replies = asyncio.run(main())
    assert replies == [b"re:hello"]
    assert len(writes) == 1
    assert writes[0][0] >> 4 == 4          # PUBACK first ...
    assert writes[0][4] >> 4 == 3          # ... then the PUBLISH of the reply, in the same write


def test_an_ack_that_never_comes_is_an_ack_timeout():
    """A server that accepts TCP and never answers: connect() ends in AckTimeout, and so does
    connect(subscribe=...); the client is closed afterwards."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    async def main() -> list:
        out = []
        for kw in ({}, {"subscribe": [("t", 1)]}):
            c = AioClient("silent", "127.0.0.1", port, timeout=0.3)
            with pytest.raises(AckTimeout, match="no CONNACK"):
                await c.connect(**kw)
            out.append(c.closed)
        return out

    try:
        assert asyncio.run(main()) == [True, True]
    finally:
        listener.close()
