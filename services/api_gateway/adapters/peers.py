"""Stubs of the services the gateway calls."""

from __future__ import annotations

from dlaas.metering.v1 import metering_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2_grpc
from dlaas.storage.v1 import storage_pb2_grpc
from services.common.clients import open_channel


class Peers:
    def __init__(self, scheduler_address: str, storage_address: str, metering_address: str):
        self._channels = [open_channel(a) for a in (scheduler_address, storage_address, metering_address)]
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self._channels[0])
        self.storage = storage_pb2_grpc.StorageServiceStub(self._channels[1])
        self.metering = metering_pb2_grpc.MeteringServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
