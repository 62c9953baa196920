"""The tables as the code queries them (SQLAlchemy Core); the migrations create them, this never does."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

users = sa.Table("users", metadata,
                 sa.Column("name", sa.String(64), primary_key=True),
                 sa.Column("role", sa.String(16), nullable=False),
                 sa.Column("password_hash", sa.Text, nullable=False),
                 sa.Column("disabled", sa.Boolean, nullable=False),
                 sa.Column("created", sa.Text, nullable=False))

reports = sa.Table("reports", metadata,
                   sa.Column("id", sa.Text, primary_key=True),
                   sa.Column("scan_id", sa.Text, nullable=False),
                   sa.Column("created", sa.Text, nullable=False),
                   sa.Column("owner", sa.String(64), nullable=False),
                   sa.Column("patient_key", sa.String(64)))

versions = sa.Table("versions", metadata,
                    sa.Column("report_id", sa.Text, primary_key=True),
                    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("author", sa.Text, nullable=False),
                    sa.Column("created", sa.Text, nullable=False),
                    sa.Column("change_note", sa.Text, nullable=False),
                    sa.Column("changed_sections", sa.Text, nullable=False),
                    sa.Column("content", sa.Text, nullable=False),
                    sa.Column("signed_by", sa.Text),
                    sa.Column("signed_at", sa.Text),
                    sa.Column("signed_role", sa.String(16)))

wordings = sa.Table("wordings", metadata,
                    sa.Column("concept_id", sa.Text, primary_key=True),
                    sa.Column("wording", sa.Text, nullable=False),
                    sa.Column("report_id", sa.Text, nullable=False))

conversations = sa.Table("conversations", metadata,
                         sa.Column("id", sa.Text, primary_key=True),
                         sa.Column("scan_id", sa.Text, nullable=False),
                         sa.Column("updated", sa.Text, nullable=False),
                         sa.Column("content", sa.Text, nullable=False),
                         sa.Column("owner", sa.String(64), nullable=False),
                         sa.Column("patient_key", sa.String(64)))

unsaved_edits = sa.Table("unsaved_edits", metadata,
                         sa.Column("report_id", sa.Text, primary_key=True),
                         sa.Column("based_on", sa.Integer, nullable=False),
                         sa.Column("author", sa.Text, nullable=False),
                         sa.Column("updated", sa.Text, nullable=False),
                         sa.Column("text", sa.Text, nullable=False))

report_erasures = sa.Table("report_erasures", metadata,
                           sa.Column("report_id", sa.Text, primary_key=True),
                           sa.Column("erased_at", sa.Text, nullable=False),
                           sa.Column("erased_by", sa.String(64), nullable=False),
                           sa.Column("reason", sa.Text, nullable=False))

audit = sa.Table("audit", metadata,
                 sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
                 sa.Column("at", sa.Text, nullable=False),
                 sa.Column("user_name", sa.String(64), nullable=False),
                 sa.Column("action", sa.String(32), nullable=False),
                 sa.Column("scan_id", sa.String(64)),
                 sa.Column("detail", sa.Text, nullable=False),
                 sa.Column("detail_digest", sa.String(64), nullable=False),
                 sa.Column("prev_hash", sa.String(64), nullable=False),
                 sa.Column("hash", sa.String(64), nullable=False))

quarantine = sa.Table("quarantine", metadata,
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                      sa.Column("source", sa.String(32), nullable=False),
                      sa.Column("row_key", sa.Text, nullable=False),
                      sa.Column("reason", sa.Text, nullable=False),
                      sa.Column("content", sa.Text, nullable=False),
                      sa.Column("at", sa.Text, nullable=False))
