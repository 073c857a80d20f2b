"""`python -m users_service.migrate`: bring the users database to the latest revision."""

from pathlib import Path

from meshkit.migrations import upgrade_to_head
from users_service.settings import UsersSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    settings = UsersSettings()
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set")
    upgrade_to_head(MIGRATIONS, settings.database_url)


if __name__ == "__main__":
    main()
