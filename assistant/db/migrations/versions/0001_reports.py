"""Reports, versions, remembered wordings, conversations and unsaved edits (the schema before migrations).

A database file written by that earlier version already holds these tables; it is adopted as it is.

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
    if sa.inspect(op.get_bind()).has_table("reports"):
        return
    op.create_table("reports",
                    sa.Column("id", sa.Text, primary_key=True),
                    sa.Column("scan_id", sa.Text, nullable=False),
                    sa.Column("created", sa.Text, nullable=False))
    op.create_table("versions",
                    sa.Column("report_id", sa.Text, sa.ForeignKey("reports.id"), primary_key=True),
                    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("author", sa.Text, nullable=False),
                    sa.Column("created", sa.Text, nullable=False),
                    sa.Column("change_note", sa.Text, nullable=False),
                    sa.Column("changed_sections", sa.Text, nullable=False),
                    sa.Column("content", sa.Text, nullable=False),
                    sa.Column("signed_by", sa.Text),
                    sa.Column("signed_at", sa.Text))
    op.create_table("wordings",
                    sa.Column("concept_id", sa.Text, primary_key=True),
                    sa.Column("wording", sa.Text, nullable=False),
                    sa.Column("report_id", sa.Text, nullable=False))
    op.create_table("conversations",
                    sa.Column("id", sa.Text, primary_key=True),
                    sa.Column("scan_id", sa.Text, nullable=False),
                    sa.Column("updated", sa.Text, nullable=False),
                    sa.Column("content", sa.Text, nullable=False))
    op.create_table("unsaved_edits",
                    sa.Column("report_id", sa.Text, sa.ForeignKey("reports.id"), primary_key=True),
                    sa.Column("based_on", sa.Integer, nullable=False),
                    sa.Column("author", sa.Text, nullable=False),
                    sa.Column("updated", sa.Text, nullable=False),
                    sa.Column("text", sa.Text, nullable=False))
    op.create_index("reports_by_scan", "reports", ["scan_id"])
    op.create_index("conversations_by_scan", "conversations", ["scan_id", "updated"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER signed_versions_are_final BEFORE UPDATE ON versions WHEN OLD.signed_at IS NOT NULL "
                   "BEGIN SELECT RAISE(ABORT, 'signed versions are final'); END")
        op.execute("CREATE TRIGGER versions_are_kept BEFORE DELETE ON versions "
                   "BEGIN SELECT RAISE(ABORT, 'report versions are never deleted'); END")
    else:
        op.execute("""CREATE FUNCTION scanchat_signed_versions_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF OLD.signed_at IS NOT NULL THEN RAISE EXCEPTION 'signed versions are final'; END IF; RETURN NEW; END $$""")
        op.execute("CREATE TRIGGER signed_versions_are_final BEFORE UPDATE ON versions FOR EACH ROW "
                   "EXECUTE FUNCTION scanchat_signed_versions_are_final()")
        op.execute("""CREATE FUNCTION scanchat_versions_are_kept() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'report versions are never deleted'; END $$""")
        op.execute("CREATE TRIGGER versions_are_kept BEFORE DELETE ON versions FOR EACH ROW "
                   "EXECUTE FUNCTION scanchat_versions_are_kept()")


def downgrade() -> None:
    raise NotImplementedError("ScanChat databases are only migrated forwards; restore a backup to go back.")
