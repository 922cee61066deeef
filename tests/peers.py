"""Real peers the tests need and this repository does not ship, each skipped with a pointer when absent
(and failed instead under CI, where .ci/run provides them).

PostgreSQL: set GATEWAY_TEST_POSTGRES to a URL of a server where the tests may create and drop databases
(.ci/run starts a throwaway cluster on a loopback port).

Prism mock servers enforcing the vendors' official OpenAPI specs, for contract tests of the SMS and email sinks:
the specs are not part of this repository. Set VENDOR_SPECS_DIR to a folder holding twilio_api_v2010.json
(github.com/twilio/twilio-oai, spec/json, commit d50069b) and sendgrid_mail_v3.json (github.com/twilio/sendgrid-oai,
spec/json/tsg_mail_v3.json, commit dbe0e0d), and PRISM to Prism's executable (`npm install @stoplight/prism-cli`),
or put `prism` on PATH. Without them the contract tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

SPECS = {"twilio": "twilio_api_v2010.json", "sendgrid": "sendgrid_mail_v3.json"}


def _missing(what: str) -> None:
    message = f"these tests need {what}; see tests/peers.py"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def prism(vendor: str) -> Iterator[str]:
    """Serve the vendor's spec with `prism mock` on a free loopback port; yield its base URL."""
    specs = os.environ.get("VENDOR_SPECS_DIR")
    if not specs or not (Path(specs) / SPECS[vendor]).is_file():
        _missing(f"VENDOR_SPECS_DIR holding {SPECS[vendor]}")
    executable = os.environ.get("PRISM") or shutil.which("prism")
    if not executable:
        _missing("Prism (PRISM=/path/to/prism, or prism on PATH)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [str(executable), "mock", "-h", "127.0.0.1", "-p", str(port), str(Path(str(specs)) / SPECS[vendor])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prism did not start: {' '.join(command)}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server for the block; yield its URL."""
    admin = os.environ.get("GATEWAY_TEST_POSTGRES")
    if not admin:
        _missing("a PostgreSQL server: GATEWAY_TEST_POSTGRES=postgresql://user@host:port/postgres")
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(str(admin), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield urlunsplit(urlsplit(str(admin))._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(str(admin), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
