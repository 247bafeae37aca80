from services.common.migrations import run_migrations
from services.scheduler.adapters.db import metadata

run_migrations(metadata)
