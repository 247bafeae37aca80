"""BillingService: proto ↔ application calls, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from dlaas.gateway.v1 import billing_pb2, billing_pb2_grpc
from services.api_gateway.api.auth import authenticate
from services.api_gateway.runtime.billing import Billing
from services.api_gateway.runtime.gateway import Gateway
from services.common.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]

_GROUPINGS = frozenset(billing_pb2.UsageGrouping.values())


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, billing: Billing):
        self.billing = billing

    async def SummarizeUsage(
        self, request: billing_pb2.SummarizeUsageRequest, context: Context
    ) -> billing_pb2.SummarizeUsageResponse:
        who = authenticate(context)
        self.billing.gateway.account_parent(who.account, request.parent)
        if request.group_by not in _GROUPINGS:
            raise InvalidArgument.field("group_by", "must be RUN, GPU_TYPE or DAY")
        response = await self.billing.summarize(
            who.account, request.period, request.group_by, request.run, request.page_size, request.page_token
        )
        return billing_pb2.SummarizeUsageResponse(
            period=response.period,
            groups=[
                billing_pb2.UsageGroup(
                    key=g.key,
                    gpu_milliseconds=g.gpu_milliseconds,
                    amount_micros=g.amount_micros,
                    accruing=g.accruing,
                    attempt_count=g.attempt_count,
                )
                for g in response.groups
            ],
            next_page_token=response.next_page_token,
            total_gpu_milliseconds=response.total_gpu_milliseconds,
            total_amount_micros=response.total_amount_micros,
            currency_code=response.currency_code,
        )

    async def GetInvoice(self, request: billing_pb2.GetInvoiceRequest, context: Context) -> billing_pb2.Invoice:
        who = authenticate(context)
        if not request.name:
            raise InvalidArgument.field("name", "is required: accounts/{account}/invoices/YYYY-MM or YYYY-MM")
        invoice = await self.billing.invoice(who.account, request.name)
        return billing_pb2.Invoice(
            name=invoice.name,
            period=invoice.period,
            start_time=invoice.start_time,
            end_time=invoice.end_time,
            lines=[
                billing_pb2.InvoiceLine(
                    run=line.run,
                    gpu_type=line.gpu_type,
                    attempt_count=line.attempt_count,
                    gpu_milliseconds=line.gpu_milliseconds,
                    unit_price_micros=line.unit_price_micros,
                    amount_micros=line.amount_micros,
                    accruing=line.accruing,
                )
                for line in invoice.lines
            ],
            total_gpu_milliseconds=invoice.total_gpu_milliseconds,
            total_amount_micros=invoice.total_amount_micros,
            currency_code=invoice.currency_code,
            final=invoice.final,
            compute_time=invoice.compute_time,
        )


def add_billing_service(server: grpc.aio.Server, gateway: Gateway) -> None:
    """Registers BillingService on the gateway's server (its name is in app.SERVICE_NAMES)."""
    billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(Billing(gateway, gateway.peers)), server)
