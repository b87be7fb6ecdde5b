"""Studies: searches over config keys whose trials are ordinary runs.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("objective", sa.String(), nullable=False),
        sa.Column("space_json", sa.String(), nullable=False),
        sa.Column("config_json", sa.String(), nullable=False),
        sa.Column("sampler", sa.String(), nullable=False),
        sa.Column("pruner", sa.String(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("parallel", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("trial_seed", sa.Integer(), nullable=False),
        sa.Column("group", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("driver", sa.String(), nullable=True),
        sa.Column("driver_heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("confirm_seeds", sa.String(), nullable=True),
        sa.Column("confirm_group", sa.String(), nullable=True),
        sa.Column("confirm_trial", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        **({"sqlite_autoincrement": True} if sqlite else {}),
    )
    op.create_index("ix_studies_name", "studies", ["name"], unique=True)
    op.create_index("ix_studies_status", "studies", ["status"])
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("study_id", "number", name="uq_trials_study_number"),
    )
    op.create_index("ix_trials_study_id", "trials", ["study_id"])
    op.create_index("ix_trials_run_id", "trials", ["run_id"], unique=True)
    op.create_table(
        "optuna_journal",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("log", sa.String(), nullable=False),
        **({"sqlite_autoincrement": True} if sqlite else {}),
    )
