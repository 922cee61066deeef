"""Throughput against an earlier version of the gateway, in one sitting: the two installs alternate, and the
medians and their ratios are printed.

    .venv/bin/python bench/compare.py (--baseline DIR | --postgres URL) [--rounds 3] [--duration 10]
                                      [--processes 2] [--connections 64] [--separate-worker] [--per-customer 1]

DIR is a checkout of the earlier version with its own virtual environment in DIR/.venv, e.g. for issue 16's
652322b: `git worktree add ../base 652322b && cd ../base && python3 -m venv .venv && .venv/bin/pip install -e .`

Each round runs each install once, the order alternating from round to round: a fresh store and receiver, `serve
--processes N` (a worker in each process) flat out under wrk with events no earlier load sent, each with a customer
of its own, until every accepted event has reached the receiver. Per run: accepted requests/s, delivered/s during
the load, the backlog's growth over the load's second half, acknowledgement p50 and p99, and the CPU of all the
gateway's processes per delivered event, from the load's start until its last event was delivered. The same gateway
then takes a load paced at half the rate it accepted flat out (issue 16's latency target: p99 within 20 ms there),
with new events: its requests/s, p50, p99, backlog growth and CPU per delivered event are printed as `paced ...`.
Needs wrk.

With `--postgres URL` (a database the benchmark empties before each of its runs), this checkout on PostgreSQL
alternates with itself on SQLite instead, and the PostgreSQL server's CPU per delivered event (every `postgres`
process on the machine) is printed beside the gateway's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    Gateway,
    free_port,
    gateway_phase,
    pace_for,
    start,
    start_receiver,
    stop,
    write_config,
    write_requests,
)


@dataclass(frozen=True)
class Install:
    name: str
    checkout: Path
    storage: str | None = None
    """A PostgreSQL URL, emptied before each run; None: a new SQLite file."""

    @property
    def python(self) -> str:
        return str(self.checkout / ".venv" / "bin" / "python")


def one_run(install: Install, work: Path, number: int, args: argparse.Namespace) -> dict[str, float]:
    folder = work / f"{install.name}-{number}"
    folder.mkdir()
    receiver, receiver_port = start_receiver(folder)
    port = free_port()
    config = write_config(folder, port, receiver_port, install.storage)
    environment = {**os.environ, "PYTHONPATH": str(install.checkout)}
    command = [install.python, "-P", "-m", "gateway", "-c", str(config)]  # -P: not the working directory's gateway
    if install.storage is not None:
        empty(install.storage)
        subprocess.run([*command, "migrate"], check=True, env=environment, capture_output=True)
    server_cpu = postgres_cpu_seconds()
    serve = [*command, "serve", "--processes", str(args.processes), *(["--no-worker"] if args.separate_worker else [])]
    processes = [start(serve, port, folder / "serve.log", env=environment)]
    if args.separate_worker:
        processes.append(start([*command, "worker"], port, folder / "worker.log", env=environment))
    requests, paced_requests = folder / "requests.tsv", folder / "paced.tsv"
    write_requests(requests, "unique", args.events, first=number * args.events, per_customer=args.per_customer)
    paced_first = (args.rounds + number) * args.events  # events neither this run's flat-out load nor any other sent
    write_requests(paced_requests, "unique", args.events, first=paced_first, per_customer=args.per_customer)
    try:
        gateway = Gateway(
            processes, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{receiver_port}", args.connections, args.duration
        )
        phase = gateway_phase(gateway, requests)
        server_cpu = postgres_cpu_seconds() - server_cpu
        paced = gateway_phase(gateway, paced_requests, pace_for(args.connections, phase.load["rps"] / 2))
    finally:
        stop(processes)
        stop([receiver])
    delivered = max(1, phase.accepted)
    server = {"server CPU ms per delivered event": server_cpu * 1000 / delivered} if install.storage else {}
    return {
        "accepted/s": phase.load["rps"],
        "delivered/s during the load": phase.delivered_during_load / phase.seconds,
        "backlog growth /s": phase.backlog_growth,
        "ack p50 ms": phase.load["p50"],
        "ack p99 ms": phase.load["p99"],
        "CPU ms per delivered event": phase.cpu_ms_per_request * phase.load["requests"] / delivered,
        "non-2xx": phase.load["non_2xx"] + paced.load["non_2xx"],
        **server,
        "paced at half: requests/s": paced.load["rps"],
        "paced: backlog growth /s": paced.backlog_growth,
        "paced: ack p50 ms": paced.load["p50"],
        "paced: ack p99 ms": paced.load["p99"],
        "paced: CPU ms per delivered event": paced.cpu_ms_per_request * paced.load["requests"] / max(1, paced.accepted),
    }


def empty(url: str) -> None:
    """A fresh PostgreSQL store for a run: the database's tables dropped (the run's `migrate` makes them again)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


def postgres_cpu_seconds() -> float:
    """User and system CPU time used so far by the PostgreSQL server's processes alive now (named `postgres`)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().split(" (", 1)[1].rsplit(")", 1)
        except OSError:  # the process has ended
            continue
        if name == "postgres":
            values = fields.split()
            total += int(values[11]) + int(values[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    against = parser.add_mutually_exclusive_group(required=True)
    against.add_argument("--baseline", type=Path, help="checkout of the earlier version, with .venv")
    against.add_argument("--postgres", help="a PostgreSQL database: this checkout on it, against itself on SQLite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--separate-worker", action="store_true")
    parser.add_argument(
        "--per-customer", type=int, default=1, help="events of each customer in a row (default 1: all different)"
    )
    args = parser.parse_args()
    if args.postgres:
        installs = [Install("sqlite", ROOT), Install("postgres", ROOT, args.postgres)]
    else:
        installs = [Install("baseline", args.baseline.resolve()), Install("this", ROOT)]
    results: dict[str, list[dict[str, float]]] = {install.name: [] for install in installs}
    with tempfile.TemporaryDirectory(prefix="bench-compare-", ignore_cleanup_errors=True) as folder:
        for number in range(args.rounds):
            for install in installs if number % 2 == 0 else installs[::-1]:
                run = one_run(install, Path(folder), number, args)
                results[install.name].append(run)
                shown = ", ".join(f"{key} {value:.2f}" for key, value in run.items())
                print(f"round {number + 1}, {install.name}: {shown}", flush=True)
    first, second = (install.name for install in installs)
    print(f"\n{'median of ' + str(args.rounds):34} {first:>10} {second:>10} {'ratio':>7}")
    for key in results[second][0]:
        before = statistics.median(run.get(key, 0.0) for run in results[first])
        after = statistics.median(run[key] for run in results[second])
        ratio = f"{after / before:7.2f}" if before else "      —"
        print(f"{key:34} {before:10.2f} {after:10.2f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
