"""The exceptions infraetl raises.

Every error a user can act on derives from :class:`InfraETLError`; the CLI
turns it into one line on stderr and a non-zero exit::

    InfraETLError
    ├── ConfigError            bad option, unreadable file, bad state dir
    │   └── KeyError_          missing, malformed or over-exposed Fernet key
    ├── WireError              a frame that does not open (carries .reason)
    ├── SourceError            the source cannot deliver (API down, bad file)
    ├── StoreError             the state database cannot be written
    └── ControlError           infraetl-ctl could not get an answer
        └── NotAuthorised      the producer could not open our command
"""

from __future__ import annotations


class InfraETLError(Exception):
    """Base of every error infraetl raises on purpose."""


class ConfigError(InfraETLError):
    """A setting, option or file is wrong."""


class KeyError_(ConfigError):
    """The Fernet key is missing, malformed or readable by others."""


class WireError(InfraETLError):
    """A frame was rejected; ``reason`` is the metrics label."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class SourceError(InfraETLError):
    """The source of users failed for good (after its retries)."""


class StoreError(InfraETLError):
    """The SQLite state could not be read or written."""


class ControlError(InfraETLError):
    """A control command got no usable answer."""


class NotAuthorised(ControlError):
    """The producer refused a command sealed with another key."""
