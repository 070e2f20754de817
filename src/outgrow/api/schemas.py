"""Request bodies of the REST API (responses are the domain views)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from outgrow.domain.movemode import MoveModeChoice


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(Strict):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserBody(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    password: str = Field(min_length=8, max_length=1024)
    is_admin: bool = False


class TokenBody(Strict):
    name: str = Field(min_length=1, max_length=64)


class ImageBody(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    pip: str = Field(min_length=1, max_length=4000)
    base: str | None = None
    description: str = Field("", max_length=500)


IMAGE_NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"


class PullBody(Strict):
    reference: str = Field(min_length=1, max_length=255)
    name: str | None = Field(None, pattern=IMAGE_NAME)


class TemplateSubmit(Strict):
    template: str = Field(min_length=1, max_length=63)
    overrides: dict[str, Any] = Field(default_factory=dict)


class MigrateBody(Strict):
    instance_type: str | None = None
    cpu: float | None = Field(None, gt=0, le=1024)
    mem: float | None = Field(None, gt=0, le=65536)
    mode: MoveModeChoice | None = None  # plain / postcopy / auto (default: the job's moveMode)


class RestoreBody(Strict):
    snapshot: str = Field(pattern=r"^[0-9a-f]{10}$", description="the snapshot's id")


class ModifyBody(Strict):
    migrate_policy: str | None = Field(None, max_length=2000)
    vm_policy: str | None = Field(None, max_length=500)
    idle_timeout_s: float | None = Field(None, ge=0, le=10 * 365 * 86400)
    # seconds, or "15m", "off" (domain/snapshots.py)
    checkpoint_interval: (
        Annotated[float, Field(ge=0, le=10 * 365 * 86400)]
        | Annotated[str, Field(max_length=32)]
        | None
    ) = None


class TemplateBody(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ReclaimBody(Strict):
    in_s: float = Field(30.0, ge=0, le=3600)
