from meshkit.migrations import run_env
from notifications_service.models import metadata

run_env(metadata)
