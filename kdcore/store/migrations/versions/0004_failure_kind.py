"""A failed run's kind of failure as a field (diverged, device_lost, no_space), not recognised by its text.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The words each kind's error has always started with or contained, for runs stored before the field
EARLIER_WORDS = {
    "diverged": "%the loss became%",
    "device_lost": "the GPU failed (a CUDA device-side error)%",
    "no_space": "%no space left on the disk of%",
}


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("failure", sa.String(), nullable=True))
    runs = sa.table("runs", sa.column("status", sa.String), sa.column("error", sa.String),
                    sa.column("failure", sa.String))
    for kind, words in EARLIER_WORDS.items():
        op.get_bind().execute(runs.update().where(runs.c.status == "failed", runs.c.failure.is_(None),
                                                  runs.c.error.like(words)).values(failure=kind))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("failure")
