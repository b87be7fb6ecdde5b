"""The queue in the store: a unique folder per run, leases, cancel flags, live progress; numbers never reused.

Revision ID: 0002
Revises: 0001
"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS = [
    ("uuid", sa.String(), True),
    ("folder", sa.String(), True),  # relative to the artefact root; 0.1.0 runs keep their "<id>" folders
    ("worker", sa.String(), True),  # host:pid of the worker holding the lease
    ("heartbeat_at", sa.DateTime(), True),
    ("cancel_requested", sa.Boolean(), False),
    ("attempt", sa.Integer(), False),
    ("phase", sa.String(), True),
    ("live_json", sa.String(), False),
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # SQLite reuses the highest id after a delete unless the table is AUTOINCREMENT: rebuild it so
    table_kwargs = {"sqlite_autoincrement": True} if sqlite else {}
    with op.batch_alter_table("runs", recreate="always" if sqlite else "auto", table_kwargs=table_kwargs) as batch:
        for name, type_, nullable in NEW_COLUMNS:
            default = {"cancel_requested": sa.false(), "attempt": sa.text("0"), "live_json": sa.text("'{}'")}.get(name)
            batch.add_column(sa.Column(name, type_, nullable=nullable, server_default=default))
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("uuid", sa.String), sa.column("folder", sa.String),
                    sa.column("owner", sa.String), sa.column("worker", sa.String))
    bind = op.get_bind()
    for (run_id, owner) in bind.execute(sa.select(runs.c.id, runs.c.owner)).all():
        bind.execute(runs.update().where(runs.c.id == run_id).values(
            uuid=uuid.uuid4().hex, folder=str(run_id), worker=owner))
    op.create_index("ix_runs_uuid", "runs", ["uuid"], unique=True)
