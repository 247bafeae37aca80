"""Accounts, API keys, authentication and submission rate limits.

Authentication is on the path of every public call, so verified keys are cached for
`auth_cache_s` seconds: a key revoked here stops working at once on this gateway, and within
that many seconds on other replicas. Rate limits are token buckets per account, per gateway
replica (N replicas admit up to N times the tier's rate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dlaas.scheduler.v1 import scheduler_pb2
from services.api_gateway.adapters.accounts import AccountRepository, AccountRow, KeyRow
from services.api_gateway.adapters.peers import Peers
from services.api_gateway.domain import keys
from services.api_gateway.settings import GatewaySettings
from services.common import names, pagination
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.timeutil import now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    account: str
    tier: str
    admin: bool = False


@dataclass(frozen=True)
class IssuedKey:
    key: KeyRow
    secret: str = field(repr=False)  # empty on a retried request: the secret exists only in the first answer


class Accounts:
    def __init__(
        self,
        settings: GatewaySettings,
        repo: AccountRepository,
        peers: Peers,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.repo = repo
        self.peers = peers
        self.clock = clock
        self._cache: dict[str, tuple[float, KeyRow, str]] = {}  # prefix → (expires, key, tier)
        # Bumped by every revocation and tier change: a lookup that overlapped one is not cached.
        self._generation = 0
        self._buckets: dict[str, keys.TokenBucket] = {}

    # ---- who is calling --------------------------------------------------------------------

    async def authenticate(self, authorization: str) -> Caller:
        scheme, _, key = authorization.partition(" ")
        if not authorization:
            raise Unauthenticated(
                "this call needs an API key: send `authorization: Bearer <key>` (the CLI reads DLAAS_API_KEY "
                "or its config file)",
                reason="API_KEY_MISSING",
            )
        prefix = keys.prefix_of(key.strip()) if scheme.lower() == "bearer" else None
        if prefix is None:
            raise Unauthenticated("the API key is malformed: expected `Bearer dlaas_…`", reason="API_KEY_INVALID")
        now = self.clock()
        cached = self._cache.get(prefix)
        if cached is not None and cached[0] > now:
            _, row, tier = cached
        else:
            generation = self._generation
            found = await self.repo.key(prefix)
            account = await self.repo.get(found.account) if found else None
            if found is None or account is None:
                raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")
            row, tier = found, account.tier
            if generation == self._generation:
                self._cache[prefix] = (now + self.settings.auth_cache_s, row, tier)
        if row.revoked_ms is not None or not keys.matches(key.strip(), row.digest):
            raise Unauthenticated("the API key is not valid (revoked, or not ours)", reason="API_KEY_INVALID")
        return Caller(row.account, tier, row.admin)

    def _forget(self, account: str) -> None:
        self._generation += 1
        for prefix in [p for p, (_, row, _) in self._cache.items() if row.account == account]:
            del self._cache[prefix]

    @staticmethod
    def require_admin(caller: Caller) -> None:
        if not caller.admin:
            raise PermissionDenied("this call needs an admin key", reason="ADMIN_KEY_REQUIRED")

    def own_account(self, caller: Caller, parent: str, field: str = "parent") -> str:
        """The account `parent` names (empty: the caller's). Only admins act on other accounts;
        for anyone else another account is NOT_FOUND (no existence leak)."""
        if not parent:
            return caller.account
        account = names.parse_account(parent, field)
        if account != caller.account and not caller.admin:
            raise NotFound(f"{parent} not found")
        return account

    # ---- rate limits -----------------------------------------------------------------------

    def admit_submission(self, caller: Caller) -> Callable[[], None]:
        """Takes a token from the account's bucket, or refuses; answers how to give it back (a retry
        found to be one only after admission does not count)."""
        limit = self.settings.submission_limits.get(caller.tier, self.settings.default_submission_limit)
        now = self.clock()
        bucket = self._buckets.get(caller.account)
        if bucket is None or bucket.rate != limit.per_second or bucket.burst != limit.burst:
            bucket = self._buckets[caller.account] = keys.TokenBucket.full(limit.per_second, limit.burst, now)
        wait = bucket.take(now)
        if wait > 0:
            raise ResourceExhausted(
                f"too many submissions: the {caller.tier} tier allows {limit.per_second:g} a second "
                f"(bursts of {limit.burst}); retry in {wait:.2f} s",
                reason="SUBMISSION_RATE_EXCEEDED",
                retry_delay_s=wait,
            )
        return bucket.give_back

    # ---- accounts --------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Makes the configured admin key work: its account and key, once (restarts change nothing)."""
        if self.settings.bootstrap_admin_key is None:
            return
        secret = self.settings.bootstrap_admin_key.get_secret_value()
        prefix = keys.prefix_of(secret)
        if prefix is None:
            raise ValueError("DLAAS_GATEWAY_BOOTSTRAP_ADMIN_KEY is not a dlaas key (dlaas_<8 hex>_<43 characters>)")
        if await self.repo.key(prefix) is not None:
            return
        now = now_ms()
        key = KeyRow(prefix, self.settings.admin_account, keys.digest(secret), True, "bootstrap admin key", now, None)
        if await self.repo.get(self.settings.admin_account) is None:
            await self.repo.create(AccountRow(self.settings.admin_account, "standard", now), key, None)
        else:
            await self.repo.add_key(key, None)
        log.info("bootstrap admin key %s installed for account %s", prefix, self.settings.admin_account)

    async def create_account(self, account_id: str, tier: str, request_id: str) -> tuple[AccountRow, IssuedKey]:
        if not keys.valid_account_id(account_id):
            raise InvalidArgument.field(
                "account_id", "must be 1-63 lower-case letters, digits and dashes, starting with a letter"
            )
        if len(request_id) > 200:
            raise InvalidArgument.field("request_id", "must be at most 200 characters")
        tier = tier or "free"
        if request_id:
            earlier = await self.repo.by_request(request_id)
            if earlier is not None:
                return earlier, await self._retried_key(earlier.account, request_id)
        if await self.repo.get(account_id) is not None:
            raise AlreadyExists(f"account {account_id} already exists")
        # The scheduler owns the tiers: it refuses an unknown one before anything is stored here.
        await self.peers.scheduler.SetAccountTier(
            scheduler_pb2.SetAccountTierRequest(account=names.account_name(account_id), tier=tier), timeout=30
        )
        now = now_ms()
        issued = keys.new_key()
        row = KeyRow(issued.prefix, account_id, issued.digest, False, "first key", now, None)
        account = AccountRow(account_id, tier, now)
        if not await self.repo.create(account, row, request_id or None):
            if request_id and (earlier := await self.repo.by_request(request_id)) is not None:
                return earlier, await self._retried_key(earlier.account, request_id)
            raise AlreadyExists(f"account {account_id} already exists")
        log.info("account %s created (tier %s) with key %s", account_id, tier, issued.prefix)
        return account, IssuedKey(row, issued.secret)

    async def _retried_key(self, account: str, request_id: str) -> IssuedKey:
        row = await self.repo.key_by_request(account, request_id)
        assert row is not None
        return IssuedKey(row, "")

    async def get_account(self, caller: Caller, name: str) -> AccountRow:
        account = self.own_account(caller, name, "name")
        found = await self.repo.get(account)
        if found is None:
            raise NotFound(f"accounts/{account} not found")
        return found

    async def list_accounts(self, page_size: int, page_token: str) -> tuple[list[AccountRow], str]:
        size = pagination.page_size(page_size, default=100, maximum=1000)
        offset = pagination.decode_token(page_token, "accounts")
        rows, total = await self.repo.page(offset, size)
        return rows, pagination.encode_token(offset + size, "accounts") if offset + size < total else ""

    async def set_tier(self, account: str, tier: str) -> None:
        await self.repo.set_tier(account, tier)
        self._forget(account)

    # ---- keys ------------------------------------------------------------------------------

    async def create_key(
        self, caller: Caller, parent: str, description: str, request_id: str, admin: bool = False
    ) -> IssuedKey:
        account = self.own_account(caller, parent)
        if admin:
            self.require_admin(caller)
        if len(description) > 200:
            raise InvalidArgument.field("description", "must be at most 200 characters")
        if len(request_id) > 200:
            raise InvalidArgument.field("request_id", "must be at most 200 characters")
        if await self.repo.get(account) is None:
            raise NotFound(f"accounts/{account} not found")
        if request_id and (earlier := await self.repo.key_by_request(account, request_id)) is not None:
            return IssuedKey(earlier, "")
        issued = keys.new_key()
        row = KeyRow(issued.prefix, account, issued.digest, admin, description, now_ms(), None)
        if not await self.repo.add_key(row, request_id or None):
            if request_id and (earlier := await self.repo.key_by_request(account, request_id)) is not None:
                return IssuedKey(earlier, "")
            raise Aborted("a new key's prefix collided with another's; try again", reason="KEY_PREFIX_COLLISION")
        log.info("key %s created for account %s", issued.prefix, account)
        return IssuedKey(row, issued.secret)

    async def list_keys(self, caller: Caller, parent: str, page_size: int, page_token: str) -> tuple[list[KeyRow], str]:
        account = self.own_account(caller, parent)
        size = pagination.page_size(page_size, default=100, maximum=1000)
        offset = pagination.decode_token(page_token, account)
        rows, total = await self.repo.keys(account, offset, size)
        return rows, pagination.encode_token(offset + size, account) if offset + size < total else ""

    async def revoke_key(self, caller: Caller, name: str) -> KeyRow:
        if not name:
            raise InvalidArgument.field("name", "is required")
        account, prefix = self._key_name(caller, name)
        key = await self.repo.key(prefix)
        if key is None or key.account != account:
            raise NotFound(f"API key {name} not found")
        if key.admin and key.revoked_ms is None and await self.repo.active_admin_keys() <= 1:
            raise FailedPrecondition(
                f"{prefix} is the last admin key: create another admin key before revoking it",
                reason="LAST_ADMIN_KEY",
            )
        row = await self.repo.revoke(account, prefix, now_ms())
        if row is None:
            raise NotFound(f"API key {name} not found")
        self._forget(account)
        log.info("key %s of account %s revoked", prefix, account)
        return row

    def _key_name(self, caller: Caller, name: str) -> tuple[str, str]:
        if keys.is_prefix(name):
            return caller.account, name
        parts = name.split("/")
        if len(parts) != 4 or parts[2] != "apiKeys" or not keys.is_prefix(parts[3]):
            raise InvalidArgument.field("name", "must be accounts/{account}/apiKeys/{prefix} or a key prefix")
        return self.own_account(caller, "/".join(parts[:2]), "name"), parts[3]
