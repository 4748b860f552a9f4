"""Placeholder: filled in by the issue-5 work."""


def register(sub):
    pass
