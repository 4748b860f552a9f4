"""The long-running fleet server and its link to the broker."""
