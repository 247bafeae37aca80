"""python -m services.storage: the object-store broker, configured by DLAAS_STORAGE_* variables."""

from __future__ import annotations

from services.common.server import serve
from services.storage.app import build_server
from services.storage.settings import StorageSettings


def main() -> None:
    serve(build_server, StorageSettings(), "storage")


if __name__ == "__main__":
    main()
