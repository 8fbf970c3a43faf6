"""Auth policy pieces: loopback detection, the token file, failed-attempt lockout, modes."""

from __future__ import annotations

import os
import stat
import time

import pytest

from edge_server.lan.auth import (
    AuthPolicy,
    FailedAttempts,
    TokenSource,
    is_loopback,
    load_or_create_token,
    write_token,
)


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.2", False), ("192.168.1.20", False), ("fe80::1%eth0", False),
    ("::ffff:10.0.0.2", False), ("", False), (None, False), ("not-an-ip", False),
])
def test_loopback_detection(address, loopback):
    assert is_loopback(address) is loopback


def test_token_file_is_created_private_and_stable(tmp_path):
    path = tmp_path / "cfg" / "server-token"
    first = load_or_create_token(path)
    assert len(first) >= 40 and load_or_create_token(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rotated_token_file_is_picked_up_within_a_second(tmp_path):
    path = tmp_path / "server-token"
    source = TokenSource(None, path)
    old = source.current()
    write_token(path, "rotated-token")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a distinct mtime on coarse clocks
    deadline = time.monotonic() + 3
    while source.current() == old and time.monotonic() < deadline:
        time.sleep(0.1)
    assert source.current() == "rotated-token"


def test_explicit_token_ignores_the_file(tmp_path):
    source = TokenSource("given", tmp_path / "never-created")
    assert source.current() == "given" and not (tmp_path / "never-created").exists()


def policy(mode: str, failures: int = 3, lockout: float = 60.0) -> AuthPolicy:
    return AuthPolicy(mode, TokenSource("s3cret", None), FailedAttempts(failures, 60.0, lockout))


def test_remote_mode_trusts_loopback_and_checks_everyone_else():
    p = policy("remote")
    assert p.check("127.0.0.1", None).allowed and p.check("::1", "anything").allowed
    assert not p.check("10.1.2.3", None).allowed
    assert not p.check("10.1.2.3", "wrong").allowed
    assert p.check("10.1.2.3", "s3cret").allowed
    assert p.token_required


def test_all_mode_checks_loopback_too_and_none_mode_checks_nobody():
    assert not policy("all").check("127.0.0.1", None).allowed
    assert policy("all").check("127.0.0.1", "s3cret").allowed
    none = policy("none")
    assert none.check("10.1.2.3", None).allowed and not none.token_required
    with pytest.raises(ValueError, match="auth must be one of"):
        policy("sometimes")


def test_failures_lock_out_one_address_only_and_expire():
    p = policy("remote", failures=3, lockout=0.5)
    for _ in range(3):
        assert not p.check("10.0.0.9", "guess").locked_out
    locked = p.check("10.0.0.9", "s3cret")  # even the right token waits out the lockout
    assert not locked.allowed and locked.locked_out and 0 < locked.retry_after <= 0.5
    assert p.check("10.0.0.8", "s3cret").allowed  # another address is unaffected
    time.sleep(0.6)
    assert p.check("10.0.0.9", "s3cret").allowed


def test_success_resets_the_failure_count():
    p = policy("remote", failures=3)
    for _ in range(10):
        assert not p.check("10.0.0.7", "guess").locked_out
        assert not p.check("10.0.0.7", "guess").locked_out
        assert p.check("10.0.0.7", "s3cret").allowed


def test_tracked_addresses_are_bounded():
    attempts = FailedAttempts(max_failures=5, max_addresses=100)
    for i in range(1000):
        attempts.record_failure(f"10.0.{i // 250}.{i % 250}")
    assert len(attempts._failures) == 100


def test_an_unverified_loopback_address_needs_the_token_and_is_counted():
    p = policy("remote", failures=3)
    for _ in range(3):
        assert not p.check("127.0.0.1", None, verified=False).allowed
    assert p.check("127.0.0.1", None).locked_out  # the failures were counted against it
    assert p.check("::1", "s3cret", verified=False).allowed
    assert policy("none").check("127.0.0.1", None, verified=False).allowed


def test_behind_a_trusted_proxy_the_client_is_checked_and_locked_out_not_the_proxy():
    p = AuthPolicy("remote", TokenSource("s3cret", None), FailedAttempts(3, 60.0, 60.0),
                   trusted_proxies=("127.0.0.1",))
    proxied = p.client("127.0.0.1", {"X-Forwarded-For": "203.0.113.7"})
    assert (proxied.address, proxied.verified) == ("203.0.113.7", True)
    for _ in range(3):
        assert not p.check(proxied.address, None, verified=proxied.verified).allowed
    assert p.check(proxied.address, "s3cret", verified=proxied.verified).locked_out
    direct = p.client("127.0.0.1", {})
    assert p.check(direct.address, None, verified=direct.verified).allowed
    local = p.client("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"})  # a local client, proxied
    assert p.check(local.address, None, verified=local.verified).allowed
    garbled = p.client("127.0.0.1", {"X-Forwarded-For": "::1 oops"})
    assert not p.check(garbled.address, None, verified=garbled.verified).allowed


def test_without_trusted_proxies_forwarding_headers_only_cost_the_loopback_exemption():
    p = policy("remote", failures=3)
    spoof = p.client("127.0.0.1", {"X-Forwarded-For": "203.0.113.7"})
    assert (spoof.address, spoof.verified) == ("127.0.0.1", False)
    assert not p.check(spoof.address, None, verified=spoof.verified).allowed
    with pytest.raises(ValueError):
        AuthPolicy("remote", TokenSource("s3cret", None), FailedAttempts(),
                   trusted_proxies=("not-a-network",))
