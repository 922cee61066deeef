"""Benchmark: the gateway's durable ingest and delivery against a bare uvicorn app, under the same wrk load.

    python bench/run.py [--connections 64] [--duration 10] [--mode unique|duplicates|yappointment]

Needs wrk (Debian package `wrk`). Prints a table; absolute figures depend on the machine, the ratio to the
baseline measured in the same run is what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


def write_requests(path: Path, mode: str, count: int) -> None:
    """Signed requests, one per line; `duplicates` repeats each event ten times."""
    moncreneau = load_samples("moncreneau.json")["appointment.created"]
    booking = load_samples("yappointment.json")["booking.created"]
    with path.open("w") as out:
        for n in range(count):
            number = n // 10 if mode == "duplicates" else n
            if mode == "yappointment":
                booking["id"], booking["data"]["id"] = f"evt_{number}", f"bkg_{number}"
                raw = json.dumps(booking, separators=(",", ":"))
                out.write(
                    f"/webhooks/yappointment\tX-Webhook-Signature\t{hmac_sha256_hex(SECRET, raw.encode())}\t{raw}\n"
                )
            else:
                moncreneau["id"], moncreneau["data"]["object"]["id"] = f"evt_{number}", number
                raw = json.dumps(moncreneau, separators=(",", ":"))
                signature = "sha256=" + hmac_sha256_hex(SECRET, raw.encode())
                out.write(f"/webhooks/moncreneau\tX-Moncreneau-Signature\t{signature}\t{raw}\n")


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


def start_receiver(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The counting receiver (bench/receiver.py) on a free port."""
    port = free_port()
    command = [PYTHON, "-m", "uvicorn", "bench.receiver:app", "--port", str(port), "--log-level", "warning"]
    return start(command, port, work / "receiver.log"), port


def wrk(url: str, requests: Path, connections: int, duration: int, threads: int = 2) -> dict[str, float]:
    script = ROOT / "bench" / "post.lua"
    output = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            str(requests),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
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


def accepted(metrics_url: str) -> int:
    """Events the gateway says it accepted (its Prometheus counter), whatever wrk managed to count."""
    total = 0.0
    for line in httpx.get(metrics_url).text.splitlines():
        if line.startswith("gateway_webhooks_total{") and 'outcome="accepted"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--mode", choices=["unique", "duplicates", "yappointment"], default="unique")
    parser.add_argument("--events", type=int, default=60_000, help="pre-signed requests to cycle through")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    requests = work / "requests.tsv"
    write_requests(requests, args.mode, args.events)
    print(f"mode {args.mode}, {args.connections} connections, {args.duration}s, {args.events} pre-signed requests")

    bare_port = free_port()
    bare = start(
        [PYTHON, "-m", "uvicorn", "bench.bare:app", "--port", str(bare_port), "--log-level", "warning"],
        bare_port,
        work / "bare.log",
    )
    try:
        baseline = wrk(f"http://127.0.0.1:{bare_port}", requests, args.connections, args.duration)
    finally:
        bare.terminate()
        bare.wait()

    receiver, receiver_port = start_receiver(work)
    gateway_port = free_port()
    config = work / "config.yaml"
    config.write_text(
        f"""
server: {{port: {gateway_port}, max_body_bytes: 65536}}
storage: {{url: "sqlite:///{work}/gateway.db"}}
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
    gateway = start(
        [PYTHON, "-m", "gateway", "-c", str(config), "serve"],
        gateway_port,
        work / "gateway.log",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        began = time.monotonic()
        load = wrk(f"http://127.0.0.1:{gateway_port}", requests, args.connections, args.duration)
        load_ended = time.monotonic()
        accepted_events = accepted(f"http://127.0.0.1:{gateway_port}/metrics")
        delivered = 0
        while time.monotonic() - load_ended < 600:
            delivered = httpx.get(f"http://127.0.0.1:{receiver_port}/count").json()["distinct"]
            if delivered >= accepted_events:
                break
            time.sleep(0.2)
        drained = time.monotonic()
        rss = peak_rss_mib(gateway.pid)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait()
        receiver.terminate()
        receiver.wait()

    rows = [
        ("accepted requests/s", f"{baseline['rps']:.0f}", f"{load['rps']:.0f}", f"{load['rps'] / baseline['rps']:.2f}"),
        ("ack latency p50 (ms)", f"{baseline['p50']:.2f}", f"{load['p50']:.2f}", ""),
        ("ack latency p99 (ms)", f"{baseline['p99']:.2f}", f"{load['p99']:.2f}", ""),
        ("non-2xx responses", str(baseline["non_2xx"]), str(load["non_2xx"]), ""),
        ("socket errors", str(baseline["socket_errors"]), str(load["socket_errors"]), ""),
        ("events accepted (stored)", "", str(accepted_events), ""),
        ("distinct events delivered", "", str(delivered), ""),
        ("end-to-end delivered/s", "", f"{delivered / (drained - began):.0f}", ""),
        ("drain after load ends (s)", "", f"{drained - load_ended:.1f}", ""),
        ("gateway peak RSS (MiB)", "", f"{rss:.0f}", ""),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'bare uvicorn':>14}  {'gateway':>16}  {'ratio':>6}")
    for label, bare_value, gateway_value, ratio in rows:
        print(f"{label:{width}}  {bare_value:>14}  {gateway_value:>16}  {ratio:>6}")
    print(f"(files in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
