"""Read-your-writes tokens: re-exported from :mod:`gdbpool.read_your_writes` (their home)."""

from gdbpool.read_your_writes import ReadYourWrites

__all__ = ["ReadYourWrites"]
