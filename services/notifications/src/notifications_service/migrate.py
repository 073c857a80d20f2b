"""`python -m notifications_service.migrate`: migrate the notifications database."""

from pathlib import Path

from meshkit.migrations import upgrade_to_head
from notifications_service.settings import NotificationsSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    settings = NotificationsSettings()
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set")
    upgrade_to_head(MIGRATIONS, settings.database_url)


if __name__ == "__main__":
    main()
