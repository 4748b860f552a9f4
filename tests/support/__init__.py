"""Helpers shared by the tests: no tests here, and no test module imports another.

fleetkit (signed documents), pki (X.509 certificates), truststores (device trust
stores), devices (the agent on in-memory flash), tlsagent (the Pi agent against
loopback TLS servers), brokers, environment (skip here, fail under CI), vectors,
mpyvm (the MicroPython WebAssembly VM) and mpunix (the MicroPython unix port).
"""
