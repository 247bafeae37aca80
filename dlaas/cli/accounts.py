"""Accounts and API keys: `dlaas login`, `dlaas whoami`, `dlaas keys …`, `dlaas admin accounts …`."""

from __future__ import annotations

from typing import Any

import click

from dlaas.cli.app import OUTPUT, cli
from dlaas.cli.cluster import admin_accounts


def _accounts(admin: bool = False, key: str | None = None, address: str | None = None) -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import accounts_pb2_grpc

    return accounts_pb2_grpc.AccountServiceStub(channel(admin=admin, key=key, address=address))


def _parent(account: str | None) -> str:
    if not account:
        return ""
    return account if account.startswith("accounts/") else f"accounts/{account}"


def _call(method: Any, request: Any) -> Any:
    import grpc

    from dlaas.cli.client import fail

    try:
        return method(request, timeout=30)
    except grpc.RpcError as exc:
        fail(exc)


@cli.command()
@click.option("--endpoint", help="The gateway's address, host:port (kept in the config file).")
def login(endpoint: str | None) -> None:
    """Keep an API key (read from standard input, never from the command line) in the config file.

    The key is checked with the platform first; the config file (DLAAS_CONFIG, default
    DLAAS_HOME/config.json) is written readable by you only.
    """
    from dlaas import config
    from dlaas.gateway.v1 import accounts_pb2

    key = click.prompt("API key", hide_input=True).strip()
    account = _call(_accounts(key=key, address=endpoint).GetAccount, accounts_pb2.GetAccountRequest())
    path = config.update_config({"api_key": key, **({"endpoint": endpoint} if endpoint else {})})
    click.echo(f"logged in as {account.name} (tier {account.tier}); the key is kept in {path}")


@cli.command()
@OUTPUT
def whoami(output: str) -> None:
    """Show the account the API key in use acts as."""
    from dlaas.cli import render
    from dlaas.gateway.v1 import accounts_pb2

    account = _call(_accounts().GetAccount, accounts_pb2.GetAccountRequest())
    if output == "json":
        render.emit_json(account)
    else:
        click.echo(f"{account.name} (tier {account.tier})")


def _show_new_key(output: str, account: str, tier: str, key: Any, secret: str) -> None:
    from dlaas.cli import render

    if output == "json":
        render.emit_json(
            {"account": account.removeprefix("accounts/"), "tier": tier, "prefix": key.prefix, "key": secret}
        )
        return
    if not secret:
        click.echo(f"{key.name} exists already (a retried request); its secret was shown only the first time")
        return
    click.echo(f"API key for {account} (prefix {key.prefix}); it is shown this once, keep it safe:")
    click.echo(secret)


@admin_accounts.command("create")
@click.argument("account")
@click.option("--tier", default="free", show_default=True, help="free, standard, premium, or an operator's tier.")
@OUTPUT
def create_account(account: str, tier: str, output: str) -> None:
    """Create ACCOUNT and print its first API key (once: only its hash is kept)."""
    from dlaas.gateway.v1 import accounts_pb2

    created = _call(
        _accounts(admin=True).CreateAccount, accounts_pb2.CreateAccountRequest(account_id=account, tier=tier)
    )
    _show_new_key(output, created.account.name, created.account.tier, created.api_key, created.secret)


@admin_accounts.command("ls")
@OUTPUT
def list_accounts(output: str) -> None:
    """List every account and its tier."""
    from dlaas.cli import render
    from dlaas.gateway.v1 import accounts_pb2

    stub, token, everything = _accounts(admin=True), "", []
    while True:
        page = _call(stub.ListAccounts, accounts_pb2.ListAccountsRequest(page_token=token))
        everything += list(page.accounts)
        token = page.next_page_token
        if not token:
            break
    if output == "json":
        render.emit_json([render.to_dict(a) for a in everything])
        return
    rows = [[a.name.removeprefix("accounts/"), a.tier, render.when(a.create_time)] for a in everything]
    render.table(["ACCOUNT", "TIER", "CREATED"], rows)


@cli.group()
def keys() -> None:
    """Your account's API keys (admins: any account's, with --account)."""


ACCOUNT = click.option("--account", help="Another account (needs an admin key).")


@keys.command("create")
@click.option("--description", default="", help="What the key is for, for people.")
@click.option("--admin", "admin_key", is_flag=True, help="An admin key (needs an admin key).")
@ACCOUNT
@OUTPUT
def create_key(description: str, admin_key: bool, account: str | None, output: str) -> None:
    """Create another API key and print it (once)."""
    from dlaas.gateway.v1 import accounts_pb2

    request = accounts_pb2.CreateApiKeyRequest(parent=_parent(account), description=description, admin=admin_key)
    created = _call(_accounts(admin=bool(account) or admin_key).CreateApiKey, request)
    owner = created.api_key.name.split("/apiKeys/")[0]
    _show_new_key(output, owner, "", created.api_key, created.secret)


@keys.command("ls")
@ACCOUNT
@OUTPUT
def list_keys(account: str | None, output: str) -> None:
    """List the keys by prefix, revoked ones included (never a secret)."""
    from dlaas.cli import render
    from dlaas.gateway.v1 import accounts_pb2

    stub, token, everything = _accounts(admin=bool(account)), "", []
    while True:
        page = _call(stub.ListApiKeys, accounts_pb2.ListApiKeysRequest(parent=_parent(account), page_token=token))
        everything += list(page.api_keys)
        token = page.next_page_token
        if not token:
            break
    if output == "json":
        render.emit_json([render.to_dict(k) for k in everything])
        return
    rows = [
        [
            k.prefix,
            "admin" if k.admin else "",
            render.when(k.create_time),
            render.when(k.revoke_time) if k.HasField("revoke_time") else "-",
            k.description,
        ]
        for k in everything
    ]
    render.table(["PREFIX", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"], rows)


@keys.command("revoke")
@click.argument("prefix")
@ACCOUNT
@OUTPUT
def revoke_key(prefix: str, account: str | None, output: str) -> None:
    """Revoke the key PREFIX (dlaas_xxxxxxxx) at once."""
    from dlaas.cli import render
    from dlaas.gateway.v1 import accounts_pb2

    name = f"{_parent(account)}/apiKeys/{prefix}" if account else prefix
    revoked = _call(_accounts(admin=bool(account)).RevokeApiKey, accounts_pb2.RevokeApiKeyRequest(name=name))
    if output == "json":
        render.emit_json(revoked)
    else:
        click.echo(f"{revoked.name} revoked")


@keys.command("rotate")
@OUTPUT
def rotate_key(output: str) -> None:
    """Replace the key in use: create a new one, keep it in the config file if the old one was
    there, then revoke the old one."""
    from dlaas import config
    from dlaas.cli import render
    from dlaas.credentials import KEY_PREFIX
    from dlaas.gateway.v1 import accounts_pb2

    old = config.api_key()
    if not old or not old.startswith(KEY_PREFIX):
        raise click.ClickException("no API key in use to rotate")
    import grpc

    from dlaas.cli.client import fail

    stub = _accounts()
    created = _call(stub.CreateApiKey, accounts_pb2.CreateApiKeyRequest(description="rotated"))
    kept = config.read_config().get("api_key") == old
    if kept:
        config.update_config({"api_key": created.secret})
    old_prefix = "_".join(old.split("_")[:2])
    try:
        _accounts(key=created.secret).RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=old_prefix), timeout=30)
    except grpc.RpcError as exc:
        if not kept:  # the new key exists nowhere else: show it before failing
            click.echo(f"the new key {created.api_key.prefix} (shown once): {created.secret}", err=True)
        fail(exc)
    if output == "json":
        render.emit_json(
            {"prefix": created.api_key.prefix, "revoked": old_prefix, "key": "" if kept else created.secret}
        )
    elif kept:
        click.echo(f"key {old_prefix} revoked; the new key {created.api_key.prefix} is in {config.config_path()}")
    else:
        click.echo(f"key {old_prefix} revoked; the new key (shown once; put it in DLAAS_API_KEY):")
        click.echo(created.secret)
