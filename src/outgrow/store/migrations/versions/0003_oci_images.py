"""OCI images: format, digest, reference, size, config, labels and rootfs facts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Existing images are venv images (``format`` defaults to "venv" on the server side).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("format", sa.String(8), nullable=False, server_default="venv"))
        batch.add_column(sa.Column("oci_digest", sa.String(71), nullable=True))
        batch.add_column(sa.Column("oci_reference", sa.Text(), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("oci_config", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("oci_facts", sa.JSON(), nullable=True))
        batch.create_index(batch.f("ix_images_oci_digest"), ["oci_digest"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index(batch.f("ix_images_oci_digest"))
        for column in (
            "oci_facts",
            "labels",
            "oci_config",
            "size_bytes",
            "oci_reference",
            "oci_digest",
            "format",
        ):
            batch.drop_column(column)
