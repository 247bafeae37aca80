import services.api_gateway.adapters.accounts
import services.api_gateway.adapters.experiments_db  # noqa: F401 - its tables join the metadata
from services.api_gateway.adapters.db import metadata
from services.common.migrations import run_migrations

run_migrations(metadata)
