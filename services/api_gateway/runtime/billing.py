"""Usage summaries and invoices, as the gateway's callers see them (metering rates them)."""

from __future__ import annotations

from dlaas.metering.v1 import metering_pb2
from services.api_gateway.adapters.peers import Peers
from services.api_gateway.runtime.gateway import Gateway
from services.common import names
from services.common.errors import NotFound


class Billing:
    def __init__(self, gateway: Gateway, peers: Peers):
        self.gateway = gateway
        self.peers = peers

    async def summarize(
        self, account: str, period: str, group_by: int, run: str, page_size: int, page_token: str
    ) -> metering_pb2.SummarizeUsageResponse:
        request = metering_pb2.SummarizeUsageRequest(
            parent=names.account_name(account),
            period=period,
            group_by=group_by,  # type: ignore[arg-type]  # the public enum's numbers are metering's
            run=self.gateway.run_name(account, run, "run") if run else "",
            page_size=page_size,
            page_token=page_token,
        )
        return await self.peers.metering.SummarizeUsage(request, timeout=30)

    async def invoice(self, account: str, name: str) -> metering_pb2.Invoice:
        """`name` is accounts/{account}/invoices/{YYYY-MM} or just the month; another account's is NOT_FOUND."""
        if "/" in name:
            parent, _, period = name.rpartition("/invoices/")
            if parent and names.parse_account(parent, "name") != account:
                raise NotFound(f"{name} not found")
        else:
            period = name
        full = f"{names.account_name(account)}/invoices/{period}"
        return await self.peers.metering.GetInvoice(metering_pb2.GetInvoiceRequest(name=full), timeout=30)
