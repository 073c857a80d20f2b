from meshkit.migrations import run_env
from orders_service.models import Base

run_env(Base.metadata)
