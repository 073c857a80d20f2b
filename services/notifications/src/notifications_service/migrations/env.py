from meshkit.migrations import run_env
from notifications_service.models import Base

run_env(Base.metadata)
