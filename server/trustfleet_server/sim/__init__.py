"""The fleet simulator: thousands of agents against a real broker, with faults."""
