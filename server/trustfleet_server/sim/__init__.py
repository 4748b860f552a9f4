"""The fleet simulator: thousands of agents against a real broker, with faults.

- config: the demo samples, SimConfig and its Faults, the fleet Plan (groups, fault flags, skews).
- brokers: the broker a run uses (a URL, the embedded broker or a private Mosquitto).
- worker: one worker's simulated devices (real agents over MemStorage) on one event loop.
- links: the coordinator's side of a worker: in its own loop or a spawned process.
- report: Progress added up over workers, the Report and its text.
- simulator: the coordinator (Simulation), BackgroundSimulation and the progress printer.
"""
