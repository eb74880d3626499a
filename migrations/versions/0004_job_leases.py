"""job leases: running jobs hold a lease renewed by a heartbeat; sends are timestamped

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 13:00:00

The reconciler (backend/jobs/reconcile.py) re-queues a running job whose lease expired (its
worker died) and sends again a queued job whose last send is old (the message was lost);
waiting_since bounds how long a job may wait on its inputs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = ("lease_expires_at", "heartbeat_at", "sent_at", "waiting_since")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(length=128), nullable=True))
        batch.create_index("ix_jobs_state_lease", ["state", "lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_state_lease")
        batch.drop_column("worker")
        for name in reversed(COLUMNS):
            batch.drop_column(name)
