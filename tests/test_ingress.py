from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from gateway.config import Config
from gateway.ingress import client_address
from gateway.sources.base import load_samples
from tests.conftest import Running, moncreneau_request, running_gateway

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]
GUARDED = """
server: {read_timeout: 200ms, trusted_proxies: [10.0.0.0/8]}
admin: {enabled: false}
sources:
  moncreneau:
    type: moncreneau
    secrets: [mc-secret-current]
    allow_ips: [203.0.113.0/24, "2001:db8::/32"]
    rate_limit: {per_second: 1, burst: 2}
  open:
    type: moncreneau
    secrets: [mc-secret-current]
"""


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("198.51.100.1", "203.0.113.5", "198.51.100.1"),  # not a trusted proxy: its header is ignored
        ("10.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.1", "6.6.6.6, 203.0.113.5, 10.0.0.2", "203.0.113.5"),  # the left-most could be forged
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        ("10.0.0.1", "not an address", "10.0.0.1"),
        ("unix-socket", None, None),
    ],
)
def test_the_client_address_believes_only_trusted_proxies(peer: str, forwarded: str | None, client: str | None) -> None:
    found = client_address(peer, forwarded, PROXIES)
    assert (str(found) if found else None) == client


@dataclass
class Guarded:
    """The guarded gateway, and HTTP clients to it that appear to come from a given address."""

    gateway: Running
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def __call__(self, host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.gateway.app, client=(host, 40000))
        self.clients.append(httpx.AsyncClient(transport=transport, base_url="http://gateway"))
        return self.clients[-1]


@pytest.fixture
async def guarded(write_config: Callable[..., Config]) -> AsyncIterator[Guarded]:
    async with running_gateway(write_config(GUARDED, with_sources=False)) as gateway:
        guarded = Guarded(gateway)
        yield guarded
        for client in guarded.clients:
            await client.aclose()


def sample(n: int) -> tuple[bytes, dict[str, str]]:
    body = load_samples("moncreneau.json")["appointment.created"]
    body["id"] = f"evt_{n}"
    return moncreneau_request(body)


@pytest.mark.anyio
async def test_only_allowed_addresses_may_post_directly_or_through_a_trusted_proxy(
    guarded: Guarded,
) -> None:
    raw, headers = sample(1)
    allowed = await guarded("203.0.113.5").post("/webhooks/moncreneau", content=raw, headers=headers)
    ipv6 = await guarded("2001:db8::7").post("/webhooks/moncreneau", content=sample(2)[0], headers=sample(2)[1])
    refused = await guarded("198.51.100.7").post("/webhooks/moncreneau", content=sample(3)[0], headers=sample(3)[1])
    spoofed = await guarded("198.51.100.7").post(
        "/webhooks/moncreneau", content=sample(4)[0], headers={**sample(4)[1], "X-Forwarded-For": "203.0.113.5"}
    )
    proxied = await guarded("10.1.2.3").post(
        "/webhooks/moncreneau", content=sample(5)[0], headers={**sample(5)[1], "X-Forwarded-For": "203.0.113.9"}
    )
    other_source = await guarded("198.51.100.7").post("/webhooks/open", content=raw, headers=headers)
    assert [r.status_code for r in (allowed, ipv6, refused, spoofed, proxied, other_source)] == [
        202,
        202,
        403,
        403,
        202,
        202,
    ]
    assert refused.json() == {"error": "forbidden", "detail": "198.51.100.7 may not post to this source"}
    gateway = guarded.gateway
    assert await gateway.store.count_events() == 4


@pytest.mark.anyio
async def test_x_forwarded_for_over_several_header_lines_is_read_as_one_list_from_the_right(guarded: Guarded) -> None:
    raw, headers = sample(6)
    lines = [*headers.items(), ("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", "198.51.100.7")]
    # the client forged the first line; the trusted proxy appended the second with the address it saw
    forged = await guarded("10.1.2.3").post("/webhooks/moncreneau", content=raw, headers=lines)
    assert forged.status_code == 403 and "198.51.100.7 may not post" in forged.json()["detail"]
    raw, headers = sample(7)
    lines = [*headers.items(), ("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-For", "203.0.113.5, 10.9.9.9")]
    assert (await guarded("10.1.2.3").post("/webhooks/moncreneau", content=raw, headers=lines)).status_code == 202


@pytest.mark.anyio
async def test_each_client_has_its_own_token_bucket(guarded: Guarded) -> None:
    gateway = guarded.gateway
    client, neighbour = guarded("203.0.113.5"), guarded("203.0.113.6")
    codes = [
        (await client.post("/webhooks/moncreneau", content=sample(n)[0], headers=sample(n)[1])).status_code
        for n in range(3)
    ]
    assert codes == [202, 202, 429]
    limited = await client.post("/webhooks/moncreneau", content=sample(9)[0], headers=sample(9)[1])
    assert limited.headers["retry-after"] == "1" and limited.json()["error"] == "rate_limited"
    assert (
        await neighbour.post("/webhooks/moncreneau", content=sample(10)[0], headers=sample(10)[1])
    ).status_code == 202
    gateway.clock.advance(1)
    assert (await client.post("/webhooks/moncreneau", content=sample(11)[0], headers=sample(11)[1])).status_code == 202
    assert (await client.post("/webhooks/moncreneau", content=sample(12)[0], headers=sample(12)[1])).status_code == 429
    rejected = gateway.app.state.metrics.registry.get_sample_value(
        "gateway_webhooks_total", {"source": "moncreneau", "type": "", "outcome": "rate_limited"}
    )
    assert rejected == 3
    assert await gateway.store.count_events() == 4


@pytest.mark.anyio
async def test_a_body_that_does_not_arrive_in_time_is_a_408(guarded: Guarded) -> None:
    gateway = guarded.gateway
    raw, headers = sample(1)
    never = anyio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield raw[:10]
        await never.wait()  # the sender stalls, as a slowloris does
        yield raw[10:]

    with anyio.fail_after(5):
        response = await guarded("203.0.113.5").post("/webhooks/open", content=slow_body(), headers=headers)
    assert response.status_code == 408 and response.json()["error"] == "request_timeout"
    assert await gateway.store.count_events() == 0
