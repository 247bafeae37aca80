"""The CLI's transfers outlive a grant: it is asked for again before its end, once, from any thread."""

from __future__ import annotations

import threading

import click

from dlaas.cli.data import RenewingGrant
from dlaas.gateway.v1 import gateway_pb2


class Gateway:
    """Hands out grants of `lifetime_s` from `now`, each with its own session key."""

    def __init__(self, clock: list[float], lifetime_s: float):
        self.clock, self.lifetime_s, self.issued = clock, lifetime_s, 0
        self.down = False

    def ask(self) -> gateway_pb2.DataGrant:
        if self.down:
            raise RuntimeError("gateway unreachable")
        self.issued += 1
        grant = gateway_pb2.DataGrant(
            s3=gateway_pb2.S3DataAccess(endpoint="http://s3", bucket="b", access_key_id=f"key-{self.issued}")
        )
        grant.expire_time.FromMilliseconds(int((self.clock[0] + self.lifetime_s) * 1000))
        return grant


def test_an_hour_long_grant_is_asked_for_again_five_minutes_before_its_end() -> None:
    clock = [1000.0]
    gateway = Gateway(clock, 3600)
    grant = RenewingGrant(gateway.ask, clock=lambda: clock[0])
    assert grant().access_key_id == "key-1"
    clock[0] += 3600 - 301
    assert grant().access_key_id == "key-1" and gateway.issued == 1
    clock[0] += 2
    assert grant().access_key_id == "key-2" and gateway.issued == 2
    clock[0] += 3600 - 301  # the new one lasts its own hour
    assert grant().access_key_id == "key-2"


def test_short_credentials_are_renewed_with_a_fifth_of_their_life_left() -> None:
    clock = [0.0]
    grant = RenewingGrant(Gateway(clock, 3).ask, clock=lambda: clock[0])
    clock[0] = 2.3
    assert grant().access_key_id == "key-1"
    clock[0] = 2.5
    assert grant().access_key_id == "key-2"


def test_a_renewal_that_fails_keeps_the_current_grant_and_says_why_if_the_transfer_then_fails() -> None:
    clock = [0.0]
    gateway = Gateway(clock, 100)
    grant = RenewingGrant(gateway.ask, clock=lambda: clock[0])
    gateway.down = True
    clock[0] = 90
    assert grant().access_key_id == "key-1"
    message = grant.failure(Exception("403 ExpiredToken")).format_message()
    assert message == "403 ExpiredToken (the grant could not be renewed: gateway unreachable)"
    gateway.down = False
    clock[0] = 91
    assert grant().access_key_id == "key-1"  # not asked again at once: at most every 30 s (here 5 s)
    clock[0] = 95
    assert grant().access_key_id == "key-2"
    assert isinstance(grant.failure(Exception("x")), click.ClickException)
    assert grant.failure(Exception("x")).format_message() == "x"


def test_threads_asking_at_once_renew_it_once() -> None:
    clock = [0.0]
    gateway = Gateway(clock, 10)
    grant = RenewingGrant(gateway.ask, clock=lambda: clock[0])
    clock[0] = 9.5
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(grant().access_key_id)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gateway.issued == 2 and set(keys) == {"key-2"}
