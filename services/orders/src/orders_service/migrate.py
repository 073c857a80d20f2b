"""`python -m orders_service.migrate`: bring the orders database to the latest revision."""

from pathlib import Path

from meshkit.migrations import migrate_from_environment
from orders_service.settings import OrdersSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    migrate_from_environment(OrdersSettings(), MIGRATIONS)


if __name__ == "__main__":
    main()
