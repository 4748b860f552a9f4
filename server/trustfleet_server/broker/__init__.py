"""MQTT for demos, tests and simulators: a codec, a small broker and an asyncio client.

Production deployments use Mosquitto or a clustered broker (docs/brokers.md);
this package exists so the demo and the tests run where none is installed.

    packets     MQTT 3.1.1 / 5 codec (bounded, incremental, typed errors)
    broker      Broker (asyncio) and EmbeddedBroker (background thread)
    aioclient   AioClient, a low-footprint MQTT 3.1.1 client
    mosquitto   PrivateMosquitto: a throwaway `mosquitto -c <conf>` on a free port
"""

from trustfleet_server.broker.aioclient import (
    AckTimeout,
    AioClient,
    ClientError,
    ConnectRefused,
    NotConnected,
)
from trustfleet_server.broker.embedded import Broker, EmbeddedBroker
from trustfleet_server.broker.packets import MQTTError, PacketError, PacketTooLarge

__all__ = [
    "AckTimeout", "AioClient", "Broker", "ClientError", "ConnectRefused", "EmbeddedBroker",
    "MQTTError", "NotConnected", "PacketError", "PacketTooLarge",
]
