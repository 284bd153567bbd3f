"""User-facing errors.

Everything the toolkit raises for a user mistake (bad input, missing weights, a corrupt model) is a
`CIError`: the CLI prints its message without a traceback, notebooks show it as one readable line.
"""

from __future__ import annotations


class CIError(Exception):
    """A problem the user can fix; the message says what and how."""


class BackboneUnavailableError(CIError):
    """Backbone weights could not be obtained (typically: offline and not cached)."""


class CheckpointError(CIError):
    """A delivered model is missing, corrupt, mismatched, or refused as unsafe."""


class DataError(CIError):
    """An image folder, dataset or pool is empty, unreadable or malformed."""
