"""`python -m orders_service.migrate`: bring the orders database to the latest revision."""

from pathlib import Path

from meshkit.migrations import upgrade_to_head
from orders_service.settings import OrdersSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    settings = OrdersSettings()
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set")
    upgrade_to_head(MIGRATIONS, settings.database_url)


if __name__ == "__main__":
    main()
