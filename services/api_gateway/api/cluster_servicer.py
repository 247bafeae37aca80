"""ClusterService and AdminService: proto ↔ application calls, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from dlaas.gateway.v1 import cluster_pb2, cluster_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2
from services.api_gateway.api.auth import authenticate
from services.api_gateway.runtime.accounts import Accounts
from services.api_gateway.runtime.cluster import Cluster
from services.api_gateway.runtime.gateway import Gateway
from services.common import names
from services.common.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]


def public_node(node: scheduler_pb2.Node) -> cluster_pb2.Node:
    return cluster_pb2.Node(
        name=node.name,
        gpu_type=node.gpu_type,
        gpu_count=node.gpu_count,
        gpus_in_use=node.gpus_in_use,
        schedulable=node.schedulable,
    )


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(self, cluster: Cluster, gateway: Gateway):
        self.cluster = cluster
        self.gateway = gateway

    async def ListNodes(self, request: cluster_pb2.ListNodesRequest, context: Context) -> cluster_pb2.ListNodesResponse:
        response = await self.cluster.nodes()
        return cluster_pb2.ListNodesResponse(nodes=[public_node(n) for n in response.nodes])

    async def ListQueue(self, request: cluster_pb2.ListQueueRequest, context: Context) -> cluster_pb2.ListQueueResponse:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        response = await self.cluster.queue(who.account, request.page_size, request.page_token)
        result = cluster_pb2.ListQueueResponse(next_page_token=response.next_page_token)
        for entry in response.entries:
            public = result.entries.add(
                run=entry.run,
                display_name=entry.display_name,
                position=entry.position,
                wait_reason=entry.wait_reason,
                gpus=entry.gpus,
                gpu_type=entry.gpu_type,
                create_time=entry.create_time,
            )
            if entry.HasField("estimated_start_time"):
                public.estimated_start_time.CopyFrom(entry.estimated_start_time)
        return result


class AdminServicer(cluster_pb2_grpc.AdminServiceServicer):
    """Every method needs an admin key: the gateway's guard checks it before the method runs."""

    def __init__(self, cluster: Cluster, accounts: Accounts):
        self.cluster = cluster
        self.accounts = accounts

    async def SetAccountTier(
        self, request: cluster_pb2.SetAccountTierRequest, context: Context
    ) -> cluster_pb2.AccountTier:
        if not request.tier:
            raise InvalidArgument.field("tier", "is required")
        account = names.parse_account(request.account, "account")
        await self.accounts.get_account(authenticate(context), request.account)  # NOT_FOUND if unknown
        tier = await self.cluster.set_tier(request.account, request.tier)
        await self.accounts.set_tier(account, tier.tier)
        return cluster_pb2.AccountTier(
            account=tier.account, tier=tier.tier, max_gpus=tier.max_gpus, max_queued_runs=tier.max_queued_runs
        )

    async def DrainNode(self, request: cluster_pb2.DrainNodeRequest, context: Context) -> cluster_pb2.Node:
        return public_node(await self.cluster.drain(request.name, True))

    async def UndrainNode(self, request: cluster_pb2.UndrainNodeRequest, context: Context) -> cluster_pb2.Node:
        return public_node(await self.cluster.drain(request.name, False))
