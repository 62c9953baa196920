"""Users and roles, an owner on every report and conversation, the signer's role, a de-identified patient key,
erasure marks, the hash-chained audit trail and a quarantine for unreadable rows.

Rows saved before owners existed belong to 'local', the single user of a loopback-only install.
Unsigned versions may now be deleted (by an erasure); signed ones still never are.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REDACTED = '{"erased":true}'  # assistant.audit.REDACTED: the only change an audit row accepts
_AUDIT_FIELDS = ("seq", "at", "user_name", "action", "scan_id", "detail_digest", "prev_hash", "hash")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table("users",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("role", sa.String(16), nullable=False),
                    sa.Column("password_hash", sa.Text, nullable=False),
                    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
                    sa.Column("created", sa.Text, nullable=False))
    for table in ("reports", "conversations"):
        op.add_column(table, sa.Column("owner", sa.String(64), nullable=False, server_default="local"))
        op.add_column(table, sa.Column("patient_key", sa.String(64)))
    op.add_column("versions", sa.Column("signed_role", sa.String(16)))
    op.create_index("reports_by_owner", "reports", ["owner", "scan_id"])
    op.create_index("reports_by_patient", "reports", ["patient_key"])
    op.create_index("conversations_by_owner", "conversations", ["owner", "scan_id", "updated"])
    op.create_index("conversations_by_patient", "conversations", ["patient_key"])
    op.create_table("report_erasures",
                    sa.Column("report_id", sa.Text, sa.ForeignKey("reports.id"), primary_key=True),
                    sa.Column("erased_at", sa.Text, nullable=False),
                    sa.Column("erased_by", sa.String(64), nullable=False),
                    sa.Column("reason", sa.Text, nullable=False))
    op.create_table("audit",
                    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("at", sa.Text, nullable=False),
                    sa.Column("user_name", sa.String(64), nullable=False),
                    sa.Column("action", sa.String(32), nullable=False),
                    sa.Column("scan_id", sa.String(64)),
                    sa.Column("detail", sa.Text, nullable=False),
                    sa.Column("detail_digest", sa.String(64), nullable=False),
                    sa.Column("prev_hash", sa.String(64), nullable=False),
                    sa.Column("hash", sa.String(64), nullable=False))
    op.create_index("audit_by_user", "audit", ["user_name", "at"])
    op.create_index("audit_by_scan", "audit", ["scan_id"])
    op.create_table("quarantine",
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("source", sa.String(32), nullable=False),
                    sa.Column("row_key", sa.Text, nullable=False),
                    sa.Column("reason", sa.Text, nullable=False),
                    sa.Column("content", sa.Text, nullable=False),
                    sa.Column("at", sa.Text, nullable=False))
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS versions_are_kept")
        op.execute("CREATE TRIGGER versions_are_kept BEFORE DELETE ON versions WHEN OLD.signed_at IS NOT NULL "
                   "BEGIN SELECT RAISE(ABORT, 'signed report versions are never deleted'); END")
        changed = " OR ".join(f"NEW.{f} IS NOT OLD.{f}" for f in _AUDIT_FIELDS)
        _driver_sql(f"CREATE TRIGGER audit_is_append_only BEFORE UPDATE ON audit "
                   f"WHEN {changed} OR NEW.detail IS NOT '{REDACTED}' "
                   "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")
        op.execute("CREATE TRIGGER audit_is_kept BEFORE DELETE ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")
    else:
        op.execute("""CREATE OR REPLACE FUNCTION scanchat_versions_are_kept() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF OLD.signed_at IS NOT NULL THEN RAISE EXCEPTION 'signed report versions are never deleted'; END IF;
            RETURN OLD; END $$""")
        changed = " OR ".join(f"NEW.{f} IS DISTINCT FROM OLD.{f}" for f in _AUDIT_FIELDS)
        _driver_sql(f"""CREATE FUNCTION scanchat_audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF TG_OP = 'DELETE' OR {changed} OR NEW.detail IS DISTINCT FROM '{REDACTED}' THEN
            RAISE EXCEPTION 'the audit trail is append-only'; END IF; RETURN NEW; END $$""")
        op.execute("CREATE TRIGGER audit_is_append_only BEFORE UPDATE OR DELETE ON audit FOR EACH ROW "
                   "EXECUTE FUNCTION scanchat_audit_is_append_only()")


def _driver_sql(statement: str) -> None:
    """As written: the marker's ':' must not be read as a bind parameter."""
    op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    raise NotImplementedError("ScanChat databases are only migrated forwards; restore a backup to go back.")
