"""label scores: every shown label's fidelity, a unit's best guesses; objective names

Units get ``label_scores`` (JSON): the labels shown with their fidelity (Spearman on held-out
images), the best guesses when the unit abstains, and the bar they were held to. Feature
visualizations rendered as ``channel`` before this revision maximised the mean of the unit's
16 strongest positions: they are renamed ``channel_top16``, and so are the render jobs that
made them (so a request for ``channel``, now Lucid's spatial mean, renders anew, and the bulk
renders already done are not redone).

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from backend.jobs.service import dedupe_key

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
JOBS = sa.table(
    "jobs",
    sa.column("id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("dedupe_key", sa.String()),
    sa.column("params", JSON),
)


def _rename_jobs(old: str, new: str) -> None:
    """Featvis jobs of objective ``old`` become ``new``, under the dedupe key that has."""
    conn = op.get_bind()
    rows = conn.execute(sa.select(JOBS.c.id, JOBS.c.params).where(JOBS.c.kind == "featvis"))
    taken = set(conn.scalars(sa.select(JOBS.c.dedupe_key)))
    for job_id, params in rows.all():
        if not isinstance(params, dict) or params.get("objective") != old:
            continue
        renamed = {**params, "objective": new}
        key = dedupe_key("featvis", renamed)
        if key in taken:  # the same render under the new name exists: keep that one
            conn.execute(sa.delete(JOBS).where(JOBS.c.id == job_id))
            continue
        taken.add(key)
        conn.execute(
            sa.update(JOBS).where(JOBS.c.id == job_id).values(params=renamed, dedupe_key=key)
        )


def upgrade() -> None:
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label_scores", JSON, nullable=True))
    op.execute(
        "UPDATE artifacts SET variant = 'channel_top16' "
        "WHERE kind = 'featvis' AND variant = 'channel'"
    )
    _rename_jobs("channel", "channel_top16")


def downgrade() -> None:
    _rename_jobs("channel_top16", "channel")
    op.execute(
        "UPDATE artifacts SET variant = 'channel' "
        "WHERE kind = 'featvis' AND variant = 'channel_top16'"
    )
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.drop_column("label_scores")
