"""The fleet store, by concern: messages (device messages checked against the one status
schema, trustfleet_device.status), sql (the SQLite/PostgreSQL shim) and db (FleetDB: tables,
ingest, queries, rollout persistence)."""
