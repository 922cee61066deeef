"""Real peers the tests need and this repository does not ship: started by the suite itself when their programs
are on the machine, skipped with a pointer when absent (and failed instead under CI, where .ci/run installs them).

PostgreSQL: GATEWAY_TEST_POSTGRES, a URL of a server where the tests may create and drop databases; when unset,
the suite starts a throwaway cluster on a loopback port from the PostgreSQL programs (Debian's `postgresql`
package: /usr/lib/postgresql/*/bin, or initdb and pg_ctl on PATH) and removes it at the end.

Prism mock servers enforcing the vendors' official OpenAPI specs, for contract tests of the SMS and email sinks:
the specs are not part of this repository. VENDOR_SPECS_DIR, a folder holding twilio_api_v2010.json
(github.com/twilio/twilio-oai, spec/json, commit d50069b) and sendgrid_mail_v3.json (github.com/twilio/sendgrid-oai,
spec/json/tsg_mail_v3.json, commit dbe0e0d), defaults to ../shared/vendor-specs beside the checkout; PRISM, Prism's
executable, defaults to the one .ci/run installs (.ci/prism), then `prism` on PATH.

Chromium, for the console's browser tests: Debian's `chromium` package (CHROMIUM, its executable, defaults to
`chromium` on PATH), driven by Playwright for Python, which is told where it is (Playwright's own browser download
needs the internet).

GATEWAY_TEST_PEERS=none starts no peer (their tests skip): a quicker run while working on something else.
"""

from __future__ import annotations

import atexit
import functools
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

SPECS = {"twilio": "twilio_api_v2010.json", "sendgrid": "sendgrid_mail_v3.json"}
ROOT = Path(__file__).parent.parent
STARTS_PEERS = os.environ.get("GATEWAY_TEST_PEERS") != "none"


def _missing(what: str) -> None:
    message = f"these tests need {what}; see tests/peers.py"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def prism(vendor: str) -> Iterator[str]:
    """Serve the vendor's spec with `prism mock` on a free loopback port; yield its base URL."""
    specs = os.environ.get("VENDOR_SPECS_DIR") or str(ROOT.parent / "shared" / "vendor-specs")
    if not STARTS_PEERS or not (Path(specs) / SPECS[vendor]).is_file():
        _missing(f"VENDOR_SPECS_DIR holding {SPECS[vendor]}")
    installed = ROOT / ".ci" / "prism" / "node_modules" / ".bin" / "prism"
    executable = os.environ.get("PRISM") or (str(installed) if installed.exists() else shutil.which("prism"))
    if not STARTS_PEERS or not executable:
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
    admin = os.environ.get("GATEWAY_TEST_POSTGRES") or (_throwaway_postgres() if STARTS_PEERS else None)
    if not admin:
        _missing(
            "a PostgreSQL server: GATEWAY_TEST_POSTGRES=postgresql://user@host:port/postgres, or PostgreSQL's "
            "programs to start one (apt-get install postgresql)"
        )
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(str(admin), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield urlunsplit(urlsplit(str(admin))._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(str(admin), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster of the test run's own, which a test may stop and start again."""

    url: str
    pg_ctl: list[str]
    options: str
    log: Path

    def stop(self) -> None:
        subprocess.run([*self.pg_ctl, "-m", "immediate", "stop"], **QUIET)  # type: ignore[call-overload]

    def start(self) -> None:
        subprocess.run([*self.pg_ctl, "-l", str(self.log), "-o", self.options, "start"], **QUIET)  # type: ignore[call-overload]


QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}


def _postgres_programs() -> Path | None:
    """The folder of PostgreSQL's server programs (the newest Debian installs, else initdb's on PATH), or None."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name))
    programs = Path(versions[-1]) if versions else None
    if programs is None and (initdb := shutil.which("initdb")):
        programs = Path(initdb).parent
    return programs if programs is not None and (programs / "pg_ctl").exists() else None


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A new PostgreSQL cluster in a temporary folder on a free loopback port, removed after the block. initdb
    refuses to run as root: then the cluster belongs to the `postgres` user."""
    programs = _postgres_programs() if STARTS_PEERS else None
    if programs is None:
        _missing("PostgreSQL's programs to start a cluster (apt-get install postgresql)")
    assert programs is not None
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="gateway-test-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        [*as_user, str(programs / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres"], **QUIET
    )  # type: ignore[call-overload]
    cluster = Cluster(
        url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        pg_ctl=[*as_user, str(programs / "pg_ctl"), "-D", str(folder / "data"), "-w"],
        options=f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        log=folder / "server.log",
    )
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(
            [*cluster.pg_ctl, "-m", "immediate", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def _throwaway_postgres() -> str | None:
    """A cluster for this whole test run, stopped and removed at exit, when PostgreSQL's programs are installed."""
    if _postgres_programs() is None:
        return None
    stack = ExitStack()
    cluster = stack.enter_context(postgres_cluster())
    atexit.register(stack.close)
    return cluster.url


def chromium() -> str:
    """The path of Debian's Chromium, for Playwright's `executable_path`."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") if STARTS_PEERS else None
    if not path:
        _missing("Chromium (apt-get install chromium)")
    assert path is not None
    return path
