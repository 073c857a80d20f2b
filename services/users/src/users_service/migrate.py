"""`python -m users_service.migrate`: bring the users database to the latest revision."""

from pathlib import Path

from meshkit.migrations import migrate_from_environment
from users_service.settings import UsersSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def main() -> None:
    migrate_from_environment(UsersSettings(), MIGRATIONS)


if __name__ == "__main__":
    main()
