"""The fleet database: device messages, their validation, and rollout persistence."""
