from meshkit.migrations import run_env
from orders_service.models import metadata

run_env(metadata)
