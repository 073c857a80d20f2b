from meshkit.migrations import run_env
from users_service.models import metadata

run_env(metadata)
