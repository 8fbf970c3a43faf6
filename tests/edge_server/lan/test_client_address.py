"""Who a request is from: direct peers, trusted proxies' forwarding headers, spoofs, garbage."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge_server.lan.client_address import ClientAddress, client_address, parse_networks

TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.5", "fd00::/8"])


def who(headers, peer: str | None = "127.0.0.1", trusted=TRUSTED) -> tuple[str, bool]:
    client = client_address(peer, headers, trusted)
    return client.address, client.verified


@pytest.mark.parametrize("peer", ["127.0.0.1", "192.168.1.9", "::1"])
def test_a_request_without_forwarding_headers_is_direct(peer):
    headers = {"Host": "box:8765", "Authorization": "Bearer x", "User-Agent": "curl"}
    assert who(headers, peer) == (peer, True)
    assert who({}, peer, ()) == (peer, True)


@pytest.mark.parametrize("header", ["Forwarded", "X-Forwarded-For", "X-Real-IP",
                                    "X-Forwarded-Host", "X-Forwarded-Proto",
                                    "x-forwarded-for", "FORWARDED"])
@pytest.mark.parametrize("value", ["203.0.113.7", "for=203.0.113.7", "", "https"])
def test_any_forwarding_header_from_an_untrusted_peer_is_a_proxy_sign_but_never_believed(
        header, value):
    # the default: no trusted proxies, so a proxy on the box is just an untrusted peer
    assert who({header: value}, "127.0.0.1", ()) == ("127.0.0.1", False)


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "127.0.0.1"},
    {"Forwarded": "for=127.0.0.1"},
    {"X-Real-IP": "::1"},
    {"X-Forwarded-For": "203.0.113.7, 10.0.0.5"},  # even a chain ending in a trusted proxy
])
def test_spoofed_headers_from_an_untrusted_host_change_nothing(headers):
    assert who(headers, "192.168.1.9") == ("192.168.1.9", False)


@pytest.mark.parametrize(("xff", "client"), [
    ("203.0.113.7", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ("127.0.0.1, 203.0.113.7", "203.0.113.7"),  # a client's spoof on the left is skipped
    ("1.2.3.4, 198.51.100.2, 10.0.0.5", "198.51.100.2"),  # second proxy trusted: one further
    ("garbage, 203.0.113.7", "203.0.113.7"),  # left of the client: never read
    ("203.0.113.7:51234", "203.0.113.7"),
    ("2001:db8::7", "2001:db8::7"),
    ("[2001:db8::7]:443", "2001:db8::7"),
    ("[2001:db8::7]", "2001:db8::7"),
    ('"[2001:db8::7]:443"', "2001:db8::7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("fe80::1%eth0", "fe80::1"),
    ("127.0.0.1", "127.0.0.1"),  # a client on the proxy's own machine
    ("10.0.0.5, 127.0.0.1", "10.0.0.5"),  # all trusted: the left-most
])
def test_x_forwarded_for_from_a_trusted_proxy_names_the_right_most_untrusted_hop(xff, client):
    assert who({"X-Forwarded-For": xff}) == (client, True)


def test_repeated_header_lines_form_one_chain():
    headers = CIMultiDict([("X-Forwarded-For", "127.0.0.1"),
                           ("x-forwarded-for", "203.0.113.7")])
    assert who(headers) == ("203.0.113.7", True)
    headers = CIMultiDict([("Forwarded", "for=127.0.0.1"), ("Forwarded", "for=203.0.113.7")])
    assert who(headers) == ("203.0.113.7", True)


def test_a_trusted_ipv4_mapped_or_ipv6_peer_is_recognised():
    assert who({"X-Forwarded-For": "203.0.113.7"}, "::ffff:127.0.0.1") == ("203.0.113.7", True)
    assert who({"X-Forwarded-For": "203.0.113.7"}, "fd00::12") == ("203.0.113.7", True)
    assert who({"X-Forwarded-For": "203.0.113.7"}, "::1") == ("::1", False)  # not listed


@pytest.mark.parametrize(("forwarded", "client"), [
    ("for=203.0.113.7", "203.0.113.7"),
    ('for="203.0.113.7:4711"', "203.0.113.7"),
    ('For="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.5', "2001:db8:cafe::17"),
    ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
    ("for=192.0.2.60;proto=http;by=203.0.113.43, for=10.0.0.5", "192.0.2.60"),
    ("for=127.0.0.1, for=203.0.113.7", "203.0.113.7"),
    ('for=203.0.113.7;host="a, b;c=d"', "203.0.113.7"),  # separators inside quotes
    ('for=127.0.0.1;host="x", for = 203.0.113.7 ; proto=https', "203.0.113.7"),
    ("proto=https;for=203.0.113.7", "203.0.113.7"),
])
def test_rfc7239_forwarded_from_a_trusted_proxy(forwarded, client):
    assert who({"Forwarded": forwarded}) == (client, True)


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "garbage"},
    {"X-Forwarded-For": ""},
    {"X-Forwarded-For": "unknown"},
    {"X-Forwarded-For": "203.0.113.7, garbage"},  # the right-most hop is unreadable
    {"X-Forwarded-For": "203.0.113.7:http"},
    {"X-Forwarded-For": "[203.0.113.7]"},
    {"X-Forwarded-For": "[2001:db8::7]x"},
    {"X-Forwarded-For": "127.0.0.1, , 10.0.0.5"},
    {"Forwarded": "for=unknown"},
    {"Forwarded": 'for="_hidden"'},
    {"Forwarded": "proto=https"},  # the last hop says nothing about its client
    {"Forwarded": "for=203.0.113.7, proto=https"},
    {"Forwarded": 'for="[2001:db8::1'},  # unbalanced quote
    {"Forwarded": "for=[2001:db8::1]"},  # brackets must be quoted
    {"Forwarded": "for=127.0.0.1 garbage"},
    {"Forwarded": 'for="127.0.0.1, for=203.0.113.7"'},  # one quoted value, not two hops
    {"Forwarded": ""},
    {"X-Real-IP": "not an address"},
    {"X-Forwarded-Proto": "https"},  # a proxy, but no word on the client
    {"X-Forwarded-Host": "box.example", "X-Forwarded-Proto": "https"},
])
def test_unreadable_headers_from_a_trusted_proxy_mean_unknown_and_never_loopback(headers):
    assert who(headers) == ("unknown", False)


def test_headers_that_disagree_mean_unknown():
    both = {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"}
    assert who(both) == ("203.0.113.7", True)
    # a proxy that sets one header and passes a client's other one through unchanged
    assert who({"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=127.0.0.1"}) == (
        "unknown", False)
    assert who({"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=_x"}) == ("unknown", False)


def test_x_real_ip_is_the_last_resort_and_must_agree():
    assert who({"X-Real-IP": "203.0.113.7"}) == ("203.0.113.7", True)
    assert who({"X-Real-IP": "[2001:db8::7]:80"}) == ("2001:db8::7", True)
    assert who({"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "1.2.3.4, 203.0.113.7"}) == (
        "203.0.113.7", True)
    # X-Real-IP names a trusted proxy in front of this one: the chain decides
    assert who({"X-Real-IP": "10.0.0.5", "X-Forwarded-For": "198.51.100.2, 10.0.0.5"}) == (
        "198.51.100.2", True)
    # the proxy set X-Real-IP and passed the client's own X-Forwarded-For through
    assert who({"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "127.0.0.1"}) == (
        "unknown", False)
    assert who({"X-Real-IP": "garbage", "X-Forwarded-For": "203.0.113.7"}) == (
        "unknown", False)


def test_a_missing_peer_is_never_trusted():
    assert who({}, None) == ("?", True)
    assert who({"X-Forwarded-For": "203.0.113.7"}, None) == ("?", False)


def test_the_log_label_names_client_and_proxy():
    assert str(ClientAddress("203.0.113.7", "127.0.0.1", True)) == "203.0.113.7 via 127.0.0.1"
    assert str(ClientAddress("10.1.2.3", "10.1.2.3", True)) == "10.1.2.3"


def test_networks_are_parsed_once_and_validated():
    assert [str(n) for n in parse_networks([" 10.0.0.5", "192.168.0.0/16", "::1"])] == [
        "10.0.0.5/32", "192.168.0.0/16", "::1/128"]
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])
