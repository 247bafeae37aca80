"""Stubs of the services the gateway calls."""

from __future__ import annotations

from dlaas.credentials import Headers
from dlaas.metering.v1 import metering_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2_grpc
from dlaas.storage.v1 import storage_pb2_grpc
from services.common.clients import open_channel
from services.common.settings import ServiceCredentials


class Peers:
    def __init__(
        self,
        scheduler_address: str,
        storage_address: str,
        metering_address: str,
        credentials: ServiceCredentials,
        caller: Headers | None = None,
    ):
        addresses = (scheduler_address, storage_address, metering_address)
        self._channels = [open_channel(a, credentials, caller) for a in addresses]
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self._channels[0])
        self.storage = storage_pb2_grpc.StorageServiceStub(self._channels[1])
        self.metering = metering_pb2_grpc.MeteringServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
