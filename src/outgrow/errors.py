"""The one exception tree of outgrow.

Every error carries a short *user message* (``str(exc)``, safe to show in the CLI, the API
and the console) and an optional *detail* for logs (a CRIU log tail, a command's stderr).
Lower layers translate OS/CRIU/cloud errors at their boundary with ``raise … from exc``.

    OutgrowError
    ├── ConfigError            settings, catalog or image spec is invalid
    ├── ValidationError        user input is malformed (names the field)
    ├── TooLargeError          an upload is over its size limit (HTTP 413)
    ├── NotFoundError          unknown job, instance, image, template, type
    ├── ConflictError          duplicate name, illegal state transition
    ├── AuthError              missing/invalid credentials, not allowed
    ├── StoreUnavailable       the database cannot be reached (503: try again)
    ├── CapacityError          nothing fits (NoAvailableHost)
    ├── ProviderError          creating/deleting an instance failed
    ├── RuntimeFailure         starting/stopping a job, cgroup/namespace work failed
    ├── ImageBuildError        building an image (virtualenv) failed
    ├── StorageError           a job directory could not be mounted, released or moved
    ├── CheckpointError        criu dump/restore failed
    │   └── TransferError      moving checkpoint images between agents failed
    ├── MigrationError         a migration did not complete (job left on the source)
    │   └── JobLostError       … and the job could not be brought back on the source
    ├── AgentError             an agent could not be reached, or broke the agent protocol
    └── CancelledError         a long action was cancelled (outgrow cancel) while it waited

An agent's own error answers carry these codes; its client (``outgrow.agentapi.client``)
raises the same class again on the caller's side (:func:`error_class`), so a conflict on an
agent is a ConflictError wherever it surfaces.
"""

from __future__ import annotations


class OutgrowError(Exception):
    """Root of all outgrow errors. ``str(e)`` is the user message; ``e.detail`` is for logs."""

    code = "error"

    def __init__(self, message: str, *, detail: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.field = field

    def to_dict(self) -> dict[str, str]:
        out = {"error": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


class ConfigError(OutgrowError):
    code = "config"


class ValidationError(OutgrowError):
    code = "invalid"


class TooLargeError(OutgrowError):
    code = "too_large"


class NotFoundError(OutgrowError):
    code = "not_found"


class ConflictError(OutgrowError):
    code = "conflict"


class AuthError(OutgrowError):
    code = "unauthorized"


class CapacityError(OutgrowError):
    code = "no_capacity"


class StoreUnavailable(OutgrowError):
    """The database is down or unreachable: nothing is wrong with the request, and the same
    request may succeed once the database is back (HTTP 503)."""

    code = "store_unavailable"


class ProviderError(OutgrowError):
    code = "provider"


class RuntimeFailure(OutgrowError):
    code = "runtime"


class ImageBuildError(OutgrowError):
    code = "image_build"


class StorageError(OutgrowError):
    code = "storage"


class CheckpointError(OutgrowError):
    code = "checkpoint"


class TransferError(CheckpointError):
    code = "transfer"


class MigrationError(OutgrowError):
    code = "migration"


class JobLostError(MigrationError):
    code = "job_lost"


class AgentError(OutgrowError):
    code = "agent"


class CancelledError(OutgrowError):
    """A wait (agent health, image build, retry pause, a move's step) was cut short by a
    cancel: the action stops, cleans up what it made, and the job ends Cancelled."""

    code = "cancelled"


def _classes(root: type[OutgrowError]) -> list[type[OutgrowError]]:
    out = [root]
    for sub in root.__subclasses__():
        out += _classes(sub)
    return out


def error_class(code: str) -> type[OutgrowError] | None:
    """The error class whose ``code`` is ``code`` (None: not one of outgrow's)."""
    return next((c for c in _classes(OutgrowError) if c.code == code), None)
