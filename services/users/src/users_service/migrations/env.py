from meshkit.migrations import run_env
from users_service.models import Base

run_env(Base.metadata)
