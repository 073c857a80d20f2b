"""total_cents as bigint: the largest order the contract allows totals 10^12 cents

Revision ID: ef33e64622fe
Revises: 170871ff0dee
Create Date: 2026-11-25 12:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ef33e64622fe"
down_revision: str | None = "170871ff0dee"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("orders", "total_cents", existing_type=sa.Integer(), type_=sa.BigInteger())


def downgrade() -> None:
    op.alter_column("orders", "total_cents", existing_type=sa.BigInteger(), type_=sa.Integer())
