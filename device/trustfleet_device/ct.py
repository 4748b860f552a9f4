"""Constant-time comparison for digests and key ids."""


def equal(a, b):
    """Return True when byte strings a and b are equal, in time independent of where they differ."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0
