"""Operator-side errors that are not about a document's validity."""


class CommandError(Exception):
    """A usage-level problem found after argument parsing (exit code 2)."""
