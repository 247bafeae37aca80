from services.common.migrations import run_migrations
from services.metering.adapters.db import metadata

run_migrations(metadata)
