"""Helpers the test modules share: ports, polling other processes, signed requests, metrics, store records.

Kept here rather than imported from one test module into another, so that each test module stays self-contained.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from aiosmtpd.smtp import Envelope, Session
from hypothesis import strategies as st

from gateway.signing import hmac_sha256_hex
from gateway.sources.base import load_samples
from gateway.store.base import EventRecord
from tests.conftest import MONCRENEAU_SECRET, Running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str, seconds: float) -> None:
    """Poll a condition that lives in other processes (which cannot signal us), for at most `seconds`."""
    try:
        with anyio.fail_after(seconds):
            while True:
                value = condition()
                if await value if not isinstance(value, bool) else value:
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"gave up after {seconds:g}s waiting for {what}") from None


def signed(n: int) -> tuple[bytes, dict[str, str]]:
    """A moncreneau appointment.created of event and appointment `n`, signed."""
    body = load_samples("moncreneau.json")["appointment.created"]
    body["id"], body["data"]["object"]["id"] = f"evt_{n}", n
    raw = json.dumps(body).encode()
    return raw, {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw)}


def sample(name: str, event_type: str) -> dict[str, Any]:
    """A fresh copy of a shipped provider sample."""
    return load_samples(name)[event_type]


async def stored(gateway: Running) -> int:
    return await gateway.store.count_events()


def metric(gateway: Running, name: str, **labels: str) -> float:
    """A metric's value; a series that does not exist fails the test instead of reading as 0."""
    value = gateway.app.state.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no series {name}{labels}"
    return float(value)


def serving_children(pid: int) -> set[int]:
    """The processes `serve --processes N` spawned to serve (not multiprocessing's resource tracker); a child that
    exits while it is read is not counted."""
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(int(child))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


@contextmanager
def gateway_process(
    config: Path, port: int, log: Path, *options: str, open_files: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`serve` in a process of its own (with at most `open_files` descriptors), once it answers /healthz."""

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    command = [sys.executable, "-m", "gateway", "-c", str(config), "serve", *options]
    with healthy_process(command, port, log, {**os.environ, "PYTHONUNBUFFERED": "1"}, limit_files) as process:
        yield process


@contextmanager
def healthy_process(
    command: list[str], port: int, log: Path, env: dict[str, str], preexec: Callable[[], None] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A gateway command running, once it answers /healthz on `port`; stopped with SIGTERM after the block."""
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{' '.join(command[2:])} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def dead_owner() -> str:
    """The lease owner id a worker had in a process that has exited since."""
    finished = subprocess.run(
        [sys.executable, "-c", "from gateway.leases import owner_id; print(owner_id())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return finished.stdout.strip()


def record(
    provider_id: str = "evt_1",
    *,
    key: str | None = "mc:appointment:1",
    occurred: float = 100.0,
    received: float = 1000.0,
    **fields: Any,
) -> EventRecord:
    """An event as the store receives it."""
    settings: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "source": "moncreneau",
        "provider_event_id": provider_id,
        "provider_event_type": "appointment.created",
        "provider_delivery_id": "d",
        "type": "appointment.created",
        "occurred_at": occurred,
        "received_at": received,
        "ordering_key": key,
        "canonical": '{"json": true}',
        "raw_body": b'{"raw": 1}',
        "headers": {"x-moncreneau-event": "appointment.created"},
        **fields,
    }
    return EventRecord(**settings)


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it accepts, refuses the addresses and messages it is told to."""

    received: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    refuse_data: str | None = None

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope, address: str, options: Any) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.refuse_data:
            return self.refuse_data
        message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"


GOLDEN = Path(__file__).parent / "golden"


def matches_golden(rendered: str, path: Path) -> None:
    """`rendered` equals its reviewed file under tests/golden; UPDATE_GOLDEN=1 rewrites the file and fails, so that
    the difference is read (git diff) before it is committed."""
    reviewed = path.read_text(encoding="utf-8") if path.exists() else None
    if os.environ.get("UPDATE_GOLDEN") and rendered != reviewed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
        pytest.fail(f"{path} rewritten: review the difference (git diff), then run the tests again without it")
    assert rendered == reviewed


def mapping_matches_golden(mapped: dict[str, Any], name: str) -> None:
    """A source's canonical event (as JSON) equals tests/golden/sources/<name>.json."""
    text = json.dumps(mapped, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    matches_golden(text, GOLDEN / "sources" / f"{name}.json")


def hostile_json() -> st.SearchStrategy[Any]:
    """Any JSON a signed body may hold, customer-typed text included."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
        max_leaves=20,
    )
