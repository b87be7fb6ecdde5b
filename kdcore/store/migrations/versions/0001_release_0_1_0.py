"""The schema of release 0.1.0: runs, metrics, artefacts.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("config_json", sa.String(), nullable=False),
        sa.Column("summary_json", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("device", sa.String(), nullable=True),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("group", sa.String(), nullable=True),
        sa.Column("tags", sa.String(), nullable=False),
        sa.Column("notes", sa.String(), nullable=False),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("teacher_arch", sa.String(), nullable=False),
        sa.Column("student_arch", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("teacher_test_acc", sa.Float(), nullable=True),
        sa.Column("student_test_acc", sa.Float(), nullable=True),
        sa.Column("baseline_test_acc", sa.Float(), nullable=True),
        sa.Column("kd_gain", sa.Float(), nullable=True),
        sa.Column("student_best_val_acc", sa.Float(), nullable=True),
        sa.Column("teacher_params", sa.Integer(), nullable=True),
        sa.Column("student_params", sa.Integer(), nullable=True),
        sa.Column("teacher_flops", sa.Integer(), nullable=True),
        sa.Column("student_flops", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_runs_group", "runs", ["group"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("phase", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])
    op.create_table(
        "artefacts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
    )
    op.create_index("ix_artefacts_run_id", "artefacts", ["run_id"])
