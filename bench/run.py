"""Benchmark: the gateway's durable ingest and delivery against a bare uvicorn app, under the same wrk load.

    .venv/bin/python bench/run.py [--connections 64] [--duration 10] [--mode unique|duplicates|yappointment]
                        [--processes N] [--separate-worker [--worker-nice 10]]
                        [--probes 4 | --rate N] [--p99-target 20] [--profile]

Loads with the same connections: a bare uvicorn app on the gateway's HTTP stack (the baseline; plain h11 uvicorn
and uvicorn with as many workers as the gateway's processes are measured too); then the gateway:
- ingest alone: `serve --processes N --no-worker` flat out (as many requests as it takes), every one acknowledged
  only after its commit; the gateway started next delivers that burst (its drain time);
- flat out, delivering: the same load while the gateway delivers (its worker in each process, or a separate one);
- paced loads searching the highest rate at which delivery keeps up (the backlog stays flat) with a p99 within the
  target: the latency a provider sees at a rate the gateway sustains. Pacing is wrk's per-connection delay, so a
  probe's achieved rate is below its target by the latency.

Needs wrk (Debian package `wrk`). Prints a table; absolute figures depend on the machine, the ratio to the
baseline measured in the same run is what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.signing import hmac_sha256_hex  # noqa: E402
from gateway.sources.base import load_samples  # noqa: E402

SECRET = "bench-secret"
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_requests(path: Path, mode: str, count: int, first: int = 0, per_customer: int = 1) -> None:
    """Signed requests for events numbered from `first`, one per line; `duplicates` repeats each event ten times.
    Each customer (phone, email) has `per_customer` events in a row: by default each event has a customer of its
    own, so that no cache of parsed contacts flatters the gateway."""
    moncreneau = load_samples("moncreneau.json")["appointment.created"]
    booking = load_samples("yappointment.json")["booking.created"]
    with path.open("w") as out:
        for n in range(count):
            number = first + (n // 10 if mode == "duplicates" else n)
            if mode == "yappointment":
                booking["id"], booking["data"]["id"] = f"evt_{number}", f"bkg_{number}"
                booking["data"]["customerEmail"] = f"customer.{number // per_customer}@example.com"
                raw = json.dumps(booking, separators=(",", ":"))
                out.write(
                    f"/webhooks/yappointment\tX-Webhook-Signature\t{hmac_sha256_hex(SECRET, raw.encode())}\t{raw}\n"
                )
            else:
                moncreneau["id"], moncreneau["data"]["object"]["id"] = f"evt_{number}", number
                customer = number // per_customer
                moncreneau["data"]["object"]["phone"] = f"+2246{customer % 10**8:08d}"
                moncreneau["data"]["object"]["email"] = f"customer.{customer}@example.gn"
                raw = json.dumps(moncreneau, separators=(",", ":"))
                signature = "sha256=" + hmac_sha256_hex(SECRET, raw.encode())
                out.write(f"/webhooks/moncreneau\tX-Moncreneau-Signature\t{signature}\t{raw}\n")


def write_config(folder: Path, port: int, receiver_port: int, storage: str | None = None) -> Path:
    """The benchmarked gateway: both sources, one `http` sink to the counting receiver, logging at WARNING; its store
    is `storage`, by default a new SQLite file in `folder`."""
    config = folder / "config.yaml"
    url = storage or f"sqlite:///{folder}/gateway.db"
    config.write_text(
        f"""
server: {{port: {port}, max_body_bytes: 65536}}
storage: {{url: "{url}"}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{SECRET}], timezone: Africa/Conakry, default_region: GN}}
  yappointment: {{type: yappointment, secrets: [{SECRET}]}}
sinks:
  crm: {{type: http, options: {{url: "http://127.0.0.1:{receiver_port}/"}}, concurrency: 32, timeout: 10s}}
routes:
  - sinks: [crm]
"""
    )
    return config


def start(command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{command} did not listen on {port}; see {log}")


UVICORN = ["--app-dir", str(ROOT), "--log-level", "warning"]
"""uvicorn's options for the benchmark's own apps: found from any working directory."""


def start_receiver(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The counting receiver (bench/receiver.py) on a free port."""
    port = free_port()
    command = [PYTHON, "-m", "uvicorn", "bench.receiver:app", *UVICORN, "--port", str(port)]
    return start(command, port, work / "receiver.log"), port


def bare_uvicorn(work: Path, requests: Path, connections: int, duration: int, *stack: str) -> dict[str, float]:
    """The baseline: wrk against bench/bare.py on uvicorn, with the gateway's HTTP stack unless `stack` says."""
    port = free_port()
    command = [PYTHON, "-m", "uvicorn", "bench.bare:app", *UVICORN, "--port", str(port), *stack]
    bare = start(command, port, work / "bare.log")
    try:
        return wrk(f"http://127.0.0.1:{port}", requests, connections, duration)
    finally:
        bare.terminate()
        bare.wait()


def pace_for(connections: int, rate: float) -> int:
    """The per-connection wait (bench/post.lua's BENCH_PACE_MS) for `connections` to send `rate` requests/s."""
    return max(1, round(connections * 1000 / rate))


def wrk(url: str, requests: Path, connections: int, duration: int, pace_ms: int | None = None) -> dict[str, float]:
    """One wrk run; with `pace_ms`, each connection waits that long on average between requests (bench/post.lua)."""
    threads = 2
    script = ROOT / "bench" / "post.lua"
    env = {**os.environ, "BENCH_PACE_MS": str(pace_ms)} if pace_ms else None
    output = subprocess.run(
        [
            *("wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency"),
            *("-s", str(script), url, "--", str(requests), str(threads)),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout

    def milliseconds(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": total,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50": milliseconds("50%"),
        "p99": milliseconds("99%"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


def scrape(metrics_url: str) -> tuple[int, int]:
    """(events accepted, deliveries pending) from the gateway's Prometheus exposition."""
    accepted = pending = 0.0
    for line in httpx.get(metrics_url).text.splitlines():
        if line.startswith("gateway_webhooks_total{") and 'outcome="accepted"' in line:
            accepted += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_queue_depth{"):
            pending += float(line.rsplit(" ", 1)[1])
    return int(accepted), int(pending)


class Backlog(threading.Thread):
    """Reads the gateway's pending deliveries every second while a load runs: a backlog that keeps growing means
    delivery does not keep up with ingest."""

    def __init__(self, metrics_url: str) -> None:
        super().__init__(daemon=True)
        self.metrics_url = metrics_url
        self.readings: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            self.readings.append((time.monotonic(), scrape(self.metrics_url)[1]))

    def growth(self) -> float:
        """Pending deliveries gained per second over the second half of the load (negative: shrinking)."""
        half = self.readings[len(self.readings) // 2 :]
        if len(half) < 2:
            return float("nan")
        (t0, n0), (t1, n1) = half[0], half[-1]
        return (n1 - n0) / (t1 - t0)


def profile(process: subprocess.Popen[bytes], svg: Path, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy (`pip install py-spy`; needs ptrace rights) sampling a process for `seconds`, into a flame graph."""
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(process.pid), "--duration", str(seconds), "--output", str(svg)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def family(pid: int) -> list[int]:
    """A process and its descendants (`serve --processes N` spawns N children)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [pid, *(member for child in children for member in family(child))]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process and its descendants (all their threads) have used so far."""
    total = 0.0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The peak (VmHWM) or current (VmRSS) resident memory of a process and its descendants, summed."""
    total = 0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1])
    return total / 1024


@dataclass
class Phase:
    """One wrk load on the gateway and what came of it, counted from the gateway's and the receiver's side; the CPU
    time is all the gateway's processes', from the start of the load until its events are delivered."""

    load: dict[str, float]
    accepted: int
    delivered_during_load: int
    seconds: float
    backlog_growth: float
    drain_seconds: float
    cpu_ms_per_request: float
    sustained: bool = False

    @property
    def events_per_second(self) -> float:
        return self.accepted / self.seconds


@dataclass(frozen=True)
class Gateway:
    """The gateway's processes under test, where it and its receiver listen, and the load's shape."""

    processes: list[subprocess.Popen[bytes]]
    url: str
    receiver_url: str
    connections: int
    duration: int


def gateway_phase(gateway: Gateway, requests: Path, pace_ms: int | None = None, *, delivering: bool = True) -> Phase:
    """A load and, when the gateway is `delivering`, the wait until every event it accepted reached the receiver."""
    cpu_before = sum(cpu_seconds(process.pid) for process in gateway.processes)
    accepted_before, _ = scrape(f"{gateway.url}/metrics")
    delivered_before = httpx.get(f"{gateway.receiver_url}/count").json()["distinct"]
    backlog = Backlog(f"{gateway.url}/metrics")
    backlog.start()
    began = time.monotonic()
    load = wrk(gateway.url, requests, gateway.connections, gateway.duration, pace_ms)
    ended = time.monotonic()
    backlog.stopped.set()
    backlog.join()
    accepted = scrape(f"{gateway.url}/metrics")[0] - accepted_before
    delivered_during_load = httpx.get(f"{gateway.receiver_url}/count").json()["distinct"] - delivered_before
    drained = wait_delivered(gateway.receiver_url, delivered_before + accepted) if delivering else float("nan")
    cpu_ms = (sum(cpu_seconds(process.pid) for process in gateway.processes) - cpu_before) * 1000 / load["requests"]
    return Phase(load, accepted, delivered_during_load, ended - began, backlog.growth(), drained, cpu_ms)


def more(work: Path, args: argparse.Namespace, number: int) -> Path:
    """The `number`th load's requests: events no earlier load sent."""
    requests = work / f"load-{number}.tsv"
    write_requests(requests, args.mode, args.events, first=number * args.events)
    return requests


def delivered(receiver_url: str) -> int:
    return int(httpx.get(f"{receiver_url}/count").json()["distinct"])


def wait_delivered(receiver_url: str, total: int, *, since_first: int | None = None) -> float:
    """Seconds until the receiver has `total` distinct events; counted from now, or, given the count `since_first`
    had before, from the first new one (so that a starting gateway's start-up is not counted)."""
    began = time.monotonic()
    if since_first is not None:
        while delivered(receiver_url) == since_first and time.monotonic() - began < 60:
            time.sleep(0.01)
        began = time.monotonic()
    while (count := delivered(receiver_url)) < total and time.monotonic() - began < 600:
        time.sleep(0.05)
    if count < total:
        raise RuntimeError(f"{total - count} accepted events were not delivered within 10 minutes")
    return time.monotonic() - began


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--mode", choices=["unique", "duplicates", "yappointment"], default="unique")
    parser.add_argument("--events", type=int, default=60_000, help="pre-signed requests per load to cycle through")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="`serve --processes N` (default: one per core); the baseline runs as one process",
    )
    parser.add_argument(
        "--separate-worker",
        action="store_true",
        help="deliver from an `appointment-gateway worker` process beside `serve --no-worker`",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="with --separate-worker, run the worker at this niceness: ingest first, delivery with the CPU left",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the `serve` process with py-spy during the flat-out load (flame graph in the files' directory)",
    )
    parser.add_argument("--rate", type=int, help="one paced load at this many requests/s instead of the search")
    parser.add_argument(
        "--probes",
        type=int,
        default=4,
        help="paced loads searching the highest rate with a flat backlog and a p99 within --p99-target",
    )
    parser.add_argument("--p99-target", type=float, default=20.0, help="milliseconds (default: 20)")
    args = parser.parse_args()
    if args.probes < 1 and not args.rate:
        parser.error("--probes must be at least 1 (or give --rate): the table shows the best paced load")
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    saturating = work / "saturating.tsv"
    write_requests(saturating, args.mode, args.events)
    serving = f"serve --processes {args.processes}"
    delivering = f"nice -n {args.worker_nice} worker" if args.worker_nice else "worker"
    topology = f"{serving} --no-worker + {delivering}" if args.separate_worker else f"{serving} (a worker in each)"
    print(f"mode {args.mode}, {args.connections} connections, {args.duration}s per load, {topology}")

    baseline = bare_uvicorn(work, saturating, args.connections, args.duration)
    plain = bare_uvicorn(work, saturating, args.connections, args.duration, "--http", "h11", "--loop", "asyncio")
    several = bare_uvicorn(work, saturating, args.connections, args.duration, "--workers", str(args.processes))

    receiver, receiver_port = start_receiver(work)
    gateway_port = free_port()
    config = write_config(work, gateway_port, receiver_port)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [PYTHON, "-m", "gateway", "-c", str(config)]
    serve = [*command, "serve", "--processes", str(args.processes)]
    gateway_url, receiver_url = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{receiver_port}"

    # Ingest alone: no worker runs during the load; the gateway started next delivers the burst.
    ingesting = [start([*serve, "--no-worker"], gateway_port, work / "ingest.log", env=environment)]
    try:
        alone = gateway_phase(
            Gateway(ingesting, gateway_url, receiver_url, args.connections, args.duration), saturating, delivering=False
        )
        rss_alone = rss_mib(ingesting[0].pid)
    finally:
        stop(ingesting)

    processes = [
        start(
            [*serve, *(["--no-worker"] if args.separate_worker else [])],
            gateway_port,
            work / "gateway.log",
            env=environment,
        )
    ]
    if args.separate_worker:
        log = (work / "worker.log").open("wb")
        niced = ["nice", "-n", str(args.worker_nice)] if args.worker_nice else []
        processes.append(
            subprocess.Popen([*niced, *command, "worker"], stdout=log, stderr=subprocess.STDOUT, env=environment)
        )
    gateway = Gateway(processes, gateway_url, receiver_url, args.connections, args.duration)
    try:
        alone.drain_seconds = wait_delivered(receiver_url, alone.accepted, since_first=0)
        profiler = profile(processes[0], work / "flat-out.svg", args.duration) if args.profile else None
        flat_out = gateway_phase(gateway, more(work, args, 1))
        if profiler is not None:
            profiler.wait()
        requests_per_event = flat_out.load["requests"] / max(1, flat_out.accepted)  # 10 with --mode duplicates

        def paced(number: int, rate: float) -> Phase:
            phase = gateway_phase(gateway, more(work, args, number + 2), pace_for(args.connections, rate))
            flat = phase.load["non_2xx"] == 0 and phase.backlog_growth <= max(5.0, 0.02 * phase.events_per_second)
            fast = phase.load["p99"] <= args.p99_target
            print(
                f"paced for {rate:.0f} requests/s: {phase.load['rps']:.0f}/s, p99 {phase.load['p99']:.1f} ms,"
                f" backlog {phase.backlog_growth:+.0f}/s: {'flat' if flat else 'growing'},"
                f" p99 {'within' if fast else 'over'} {args.p99_target:g} ms"
            )
            return replace(phase, sustained=flat and fast)

        # Start at the rate delivery kept up with flat out, then bisect between the highest rate that met both
        # conditions and the lowest that did not (at first, the flat-out rate).
        good, bad = 0.0, flat_out.load["rps"]
        probes = []
        for number in range(1 if args.rate else args.probes):
            first = flat_out.delivered_during_load / flat_out.seconds * requests_per_event
            rate = args.rate or (first if number == 0 else (good + bad) / 2)
            probes.append(probe := paced(number, rate))
            good, bad = (rate, bad) if probe.sustained else (good, rate)
        steady = max(probes, key=lambda probe: (probe.sustained, probe.load["rps"]))
        rss = sum(rss_mib(process.pid) for process in processes)
    finally:
        stop(processes)
        receiver.terminate()
        receiver.wait()

    phases = (alone, flat_out, steady)
    rows = [
        ("accepted requests/s", f"{baseline['rps']:.0f}", *(f"{p.load['rps']:.0f}" for p in phases)),
        ("  ratio to the baseline", "1.00", *(f"{p.load['rps'] / baseline['rps']:.2f}" for p in phases)),
        ("ack latency p50 (ms)", f"{baseline['p50']:.2f}", *(f"{p.load['p50']:.2f}" for p in phases)),
        ("ack latency p99 (ms)", f"{baseline['p99']:.2f}", *(f"{p.load['p99']:.2f}" for p in phases)),
        ("non-2xx responses", f"{baseline['non_2xx']:.0f}", *(f"{p.load['non_2xx']:.0f}" for p in phases)),
        ("socket errors", f"{baseline['socket_errors']:.0f}", *(f"{p.load['socket_errors']:.0f}" for p in phases)),
        ("events accepted (stored)", "", *(str(p.accepted) for p in phases)),
        ("delivered/s during the load", "", *(f"{p.delivered_during_load / p.seconds:.0f}" for p in phases)),
        ("backlog growth, 2nd half (/s)", "", *(f"{p.backlog_growth:+.0f}" for p in phases)),
        ("drain after the load (s)", "", *(f"{p.drain_seconds:.1f}" for p in phases)),
        ("gateway CPU per request (ms)", "", *(f"{p.cpu_ms_per_request:.2f}" for p in phases)),
    ]
    width = max(len(row[0]) for row in rows)
    within = f"paced, p99 <= {args.p99_target:g} ms" if steady.sustained else "paced: NOT MET"
    headings = ("bare uvicorn", "ingest alone", "flat out, delivering", within)
    print(f"{'':{width}}" + "".join(f"  {heading:>20}" for heading in headings))
    for label, *values in rows:
        print(f"{label:{width}}" + "".join(f"  {value:>20}" for value in values))
    print(
        f"plain uvicorn (h11 parser, asyncio loop) under the same load: {plain['rps']:.0f} requests/s;"
        f" the gateway flat out is {flat_out.load['rps'] / plain['rps']:.2f} of that"
    )
    if args.processes > 1:
        print(
            f"bare uvicorn with --workers {args.processes} under the same load: {several['rps']:.0f} requests/s;"
            f" the gateway flat out is {flat_out.load['rps'] / several['rps']:.2f} of that"
        )
    print(
        f"gateway peak RSS: {rss_alone:.0f} MiB ingesting alone, {rss:.0f} MiB delivering (all its processes);"
        " every accepted event reached the receiver"
    )
    print(
        "ingest alone: `serve --no-worker`, nothing delivered during the load; its drain is the delivering gateway's,"
        " from its first delivery"
    )
    print(f"(files in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
