"""AccountService: proto ↔ application calls, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from dlaas.gateway.v1 import accounts_pb2, accounts_pb2_grpc
from services.api_gateway.adapters.accounts import AccountRow, KeyRow
from services.api_gateway.api.auth import authenticate
from services.api_gateway.runtime.accounts import Accounts
from services.common import names
from services.common.timeutil import to_timestamp

Context = grpc.aio.ServicerContext[Any, Any]


def public_account(row: AccountRow) -> accounts_pb2.Account:
    return accounts_pb2.Account(
        name=names.account_name(row.account), tier=row.tier, create_time=to_timestamp(row.created_ms)
    )


def public_key(row: KeyRow) -> accounts_pb2.ApiKey:
    key = accounts_pb2.ApiKey(
        name=f"{names.account_name(row.account)}/apiKeys/{row.prefix}",
        prefix=row.prefix,
        admin=row.admin,
        create_time=to_timestamp(row.created_ms),
        description=row.description,
    )
    if row.revoked_ms is not None:
        key.revoke_time.FromMilliseconds(row.revoked_ms)
    return key


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    async def CreateAccount(
        self, request: accounts_pb2.CreateAccountRequest, context: Context
    ) -> accounts_pb2.CreateAccountResponse:
        account, issued = await self.accounts.create_account(request.account_id, request.tier, request.request_id)
        return accounts_pb2.CreateAccountResponse(
            account=public_account(account), api_key=public_key(issued.key), secret=issued.secret
        )

    async def GetAccount(self, request: accounts_pb2.GetAccountRequest, context: Context) -> accounts_pb2.Account:
        return public_account(await self.accounts.get_account(authenticate(context), request.name))

    async def ListAccounts(
        self, request: accounts_pb2.ListAccountsRequest, context: Context
    ) -> accounts_pb2.ListAccountsResponse:
        rows, token = await self.accounts.list_accounts(request.page_size, request.page_token)
        return accounts_pb2.ListAccountsResponse(accounts=[public_account(r) for r in rows], next_page_token=token)

    async def CreateApiKey(
        self, request: accounts_pb2.CreateApiKeyRequest, context: Context
    ) -> accounts_pb2.CreateApiKeyResponse:
        issued = await self.accounts.create_key(
            authenticate(context), request.parent, request.description, request.request_id, request.admin
        )
        return accounts_pb2.CreateApiKeyResponse(api_key=public_key(issued.key), secret=issued.secret)

    async def ListApiKeys(
        self, request: accounts_pb2.ListApiKeysRequest, context: Context
    ) -> accounts_pb2.ListApiKeysResponse:
        rows, token = await self.accounts.list_keys(
            authenticate(context), request.parent, request.page_size, request.page_token
        )
        return accounts_pb2.ListApiKeysResponse(api_keys=[public_key(r) for r in rows], next_page_token=token)

    async def RevokeApiKey(self, request: accounts_pb2.RevokeApiKeyRequest, context: Context) -> accounts_pb2.ApiKey:
        return public_key(await self.accounts.revoke_key(authenticate(context), request.name))
