"""Nodes, the queue and operator actions, as the gateway's callers see them (the scheduler decides)."""

from __future__ import annotations

from dlaas.scheduler.v1 import scheduler_pb2
from services.api_gateway.adapters.peers import Peers
from services.common import names


class Cluster:
    def __init__(self, peers: Peers):
        self.peers = peers

    async def nodes(self) -> scheduler_pb2.ListNodesResponse:
        return await self.peers.scheduler.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=30)

    async def queue(self, account: str, page_size: int, page_token: str) -> scheduler_pb2.ListQueueResponse:
        request = scheduler_pb2.ListQueueRequest(
            parent=names.account_name(account), page_size=page_size, page_token=page_token
        )
        return await self.peers.scheduler.ListQueue(request, timeout=30)

    async def set_tier(self, account_name: str, tier: str) -> scheduler_pb2.AccountTier:
        names.parse_account(account_name, "account")
        request = scheduler_pb2.SetAccountTierRequest(account=account_name, tier=tier)
        return await self.peers.scheduler.SetAccountTier(request, timeout=30)

    async def drain(self, node: str, drained: bool) -> scheduler_pb2.Node:
        if drained:
            return await self.peers.scheduler.DrainNode(scheduler_pb2.DrainNodeRequest(name=node), timeout=30)
        return await self.peers.scheduler.UndrainNode(scheduler_pb2.UndrainNodeRequest(name=node), timeout=30)
