"""A property becomes two rows, its content and its last sighting; `properties` becomes the view over both.

A monthly re-capture delivers most records again unchanged. With one wide row per property, each
of them rewrote the whole row (about 2 KB with its raw JSON) only because the lineage columns
(which file delivered it last, and when) changed. Now:

- `property_records` holds the content: the typed columns and the record as received (the old
  `properties` table, renamed, without its lineage columns: no row is rewritten);
- `property_sightings` holds, per property, the newest file that delivered it, its campaign, its
  capture time, the first-seen time, and the hash of the content (NULL for the rows loaded before:
  their next sighting rewrites the content once and fills it in);
- `properties` is a view joining the two with the columns the table had (`captured_at` is the
  last sighting's capture time, as it always was), so every reader keeps its queries.

On PostgreSQL the property ids become `COLLATE "C"` (see BYTE_ORDER_IDS).

Also `batch_file_status.plain_json`: whether the page decodes as plain JSON, found when it was
registered (NULL for files registered before: processing finds out itself).

Revision ID: 0011_content_and_sightings
Revises: 0010_links_without_rowid
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_content_and_sightings"
down_revision = "0010_links_without_rowid"
branch_labels = None
depends_on = None

CONTENT = (
    "property_id, apn, address, street, city, state, zip, county, latitude, longitude, bedrooms, bathrooms, "
    "square_feet, lot_square_feet, year_built, property_type, estimated_value, estimated_equity, last_sale_date, "
    "last_sale_amount, owner1_first_name, owner1_last_name, owner_occupied, absentee_owner, mail_address, "
    "mail_street, mail_city, mail_state, mail_zip, mail_county, raw"
)
LINEAGE = ("source_file_id", "campaign_id", "captured_at", "first_seen_at", "last_seen_at")
DROP_LINEAGE = {name: f"ALTER TABLE property_records DROP COLUMN {name}" for name in LINEAGE}
CONTENT_OF_R = ", ".join(f"r.{name.strip()}" for name in CONTENT.split(","))
CREATE_VIEW = (
    f"CREATE VIEW properties AS SELECT {CONTENT_OF_R}, s.source_file_id, s.campaign_id, "
    "s.last_seen_at AS captured_at, s.first_seen_at, s.last_seen_at "
    # LEFT JOIN: every record has its sighting, and a count of the view then reads only property_records.
    "FROM property_records r LEFT JOIN property_sightings s ON s.property_id = r.property_id"
)
DROP_VIEW = "DROP VIEW properties"
RENAME_TO_RECORDS = "ALTER TABLE properties RENAME TO property_records"
RENAME_TO_PROPERTIES = "ALTER TABLE property_records RENAME TO properties"
RENAME_PG_KEY = "ALTER TABLE property_records RENAME CONSTRAINT pk_properties TO pk_property_records"
RENAME_PG_KEY_BACK = "ALTER TABLE properties RENAME CONSTRAINT pk_property_records TO pk_properties"
# PostgreSQL: property ids compare byte by byte (COLLATE "C"), as on SQLite and in Python: ids are identifiers,
# not words; the keys' order is the same in every database and every process, which the loader's lock order relies
# on (processing/loader.py); and comparing bytes is cheaper than a locale's rules. Rebuilds the two indexes.
BYTE_ORDER_IDS = tuple(
    f'ALTER TABLE {table} ALTER COLUMN property_id TYPE text COLLATE "C"'
    for table in ("property_records", "file_properties")
)
LOCALE_ORDER_IDS = tuple(
    f"ALTER TABLE {table} ALTER COLUMN property_id TYPE text COLLATE pg_catalog.default"
    for table in ("properties", "file_properties")
)
FILL_SIGHTINGS = (
    "INSERT INTO property_sightings (property_id, content_hash, source_file_id, campaign_id, last_seen_at, "
    "first_seen_at) SELECT property_id, NULL, source_file_id, campaign_id, last_seen_at, first_seen_at "
    "FROM property_records"
)
DROP_PLAIN_JSON = "ALTER TABLE batch_file_status DROP COLUMN plain_json"
FILL_LINEAGE = (
    "UPDATE properties SET source_file_id = s.source_file_id, campaign_id = s.campaign_id, "
    "captured_at = s.last_seen_at, first_seen_at = s.first_seen_at, last_seen_at = s.last_seen_at "
    "FROM property_sightings s WHERE s.property_id = properties.property_id"
)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column("batch_file_status", sa.Column("plain_json", sa.Boolean(), nullable=True))
    op.execute(RENAME_TO_RECORDS)
    if postgresql:
        op.execute(RENAME_PG_KEY)
        for statement in BYTE_ORDER_IDS:
            op.execute(statement)
    op.create_table(
        "property_sightings",
        sa.Column("property_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(16), nullable=True),
        sa.Column("source_file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("property_id", name="pk_property_sightings"),
        # Half of each page left free: a sighting that moves is rewritten on its own page (a HOT update, no new
        # index entry, less WAL), month after month. The table is narrow; doubling it costs little.
        postgresql_with={"fillfactor": 50},
    )
    op.execute(FILL_SIGHTINGS)
    for name in LINEAGE:
        op.execute(DROP_LINEAGE[name])  # PostgreSQL: a catalog change, no rewrite
    op.execute(CREATE_VIEW)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(DROP_VIEW)
    op.execute(RENAME_TO_PROPERTIES)
    if postgresql:
        op.execute(RENAME_PG_KEY_BACK)
        for statement in LOCALE_ORDER_IDS:
            op.execute(statement)
    with op.batch_alter_table("properties") as batch:
        batch.add_column(sa.Column("source_file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")))
        batch.add_column(sa.Column("campaign_id", sa.String(64)))
        for name in LINEAGE[2:]:
            batch.add_column(sa.Column(name, sa.DateTime(timezone=True)))
    op.execute(FILL_LINEAGE)
    with op.batch_alter_table("properties") as batch:
        for name in LINEAGE:
            batch.alter_column(name, nullable=False)
    op.drop_table("property_sightings")
    # In place on both (SQLite 3.35+): a SQLite batch rebuild would drop the table's triggers (migration 0009).
    op.execute(DROP_PLAIN_JSON)
