"""`python -m notifications_service.migrate`: migrate the notifications database."""

from pathlib import Path

from meshkit.migrations import migrate_from_environment
from notifications_service.settings import NotificationsSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    migrate_from_environment(NotificationsSettings(), MIGRATIONS)


if __name__ == "__main__":
    main()
