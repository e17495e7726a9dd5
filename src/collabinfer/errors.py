"""The one exception tree of collabinfer.

Callers catch the narrowest class that lets them recover: the device catches
:class:`LinkError` to finish an input locally, the CLI catches
:class:`CollabInferError` to print a clean message instead of a traceback.

::

    CollabInferError
    ├── ConfigError        a value the user gave is invalid or unknown
    ├── DataError          the dataset is missing, truncated or fails its checksum
    ├── ModelError         unknown model name, bad cut index, shape mismatch
    │   ├── CheckpointError  corrupt, truncated or mismatched checkpoint file
    │   └── PackageError     a model package that is truncated, tampered or too new
    ├── CodecError         bytes that do not decode, unknown codec
    ├── PlanError          no feasible plan for the given constraints
    ├── LinkError          a transfer between tiers failed
    │   └── LinkTimeout    ... because it took longer than its deadline
    └── TierError          a tier refused or failed a request
"""

from __future__ import annotations


class CollabInferError(Exception):
    """Base of every error collabinfer raises on purpose.

    ``context`` carries where it happened (tier, request id, path, ...), so a
    log line can say more than the message without string parsing.
    """

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, object] = dict(context)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        ctx = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({ctx})"


class ConfigError(CollabInferError):
    """A configuration value or name is invalid."""


class DataError(CollabInferError):
    """A dataset cannot be found, read or verified."""


class ModelError(CollabInferError):
    """A model name, cut index or tensor shape is wrong for the model."""


class CheckpointError(ModelError):
    """A checkpoint file is corrupt, truncated or belongs to another config."""


class PackageError(ModelError):
    """A model package is missing a file, fails a hash, or has a newer format version."""


class CodecError(CollabInferError):
    """Bytes cannot be decoded, or a codec name is unknown."""


class PlanError(CollabInferError):
    """No plan satisfies the constraints."""


class LinkError(CollabInferError):
    """A transfer between two tiers failed."""


class LinkTimeout(LinkError):
    """A transfer did not finish before its deadline."""


class TierError(CollabInferError):
    """A tier refused or failed a request."""
