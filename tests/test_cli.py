from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from gateway.app import create_app
from gateway.cli import SERVED_CONFIG, SERVED_WITHOUT_WORKER, main, served_app
from gateway.config import Config
from gateway.sources.base import load_samples
from gateway.store.postgres import MIGRATIONS, SCHEMA_VERSION
from gateway.testing.receiver import Answer, receiver, serving
from tests.conftest import MONCRENEAU_SECRET, moncreneau_request
from tests.helpers import free_port, serving_children

JOURNAL = """
sinks:
  journal: {{type: file, options: {{path: "{path}"}}}}
routes:
  - sinks: [journal]
"""


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("source", "event_type"), [("moncreneau", "appointment.validated"), ("yapp", "booking.created")]
)
async def test_send_test_event_posts_a_correctly_signed_sample(
    write_config: Callable[[str], Config],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    event_type: str,
) -> None:
    config = write_config(JOURNAL.format(path=tmp_path / "journal.jsonl"))
    app = create_app(config, run_worker=False)
    async with serving(app) as url:
        code = await anyio.to_thread.run_sync(
            main, ["-c", str(config.path), "send-test-event", source, event_type, "--url", url]
        )
        assert code == 0
        assert await app.state.store.count_events() == 1
    out = capsys.readouterr().out
    assert f"POST {url}/webhooks/{source} -> 202" in out and '"status":"accepted"' in out


def test_send_test_event_explains_an_unknown_type_or_source(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("")
    assert main(["-c", str(config.path), "send-test-event", "moncreneau", "booking.created"]) == 2
    assert "no moncreneau sample of type 'booking.created'; known: appointment.cancelled" in capsys.readouterr().err
    assert main(["-c", str(config.path), "send-test-event", "calendly", "x"]) == 2
    assert "no source named 'calendly'; configured: moncreneau, yapp" in capsys.readouterr().err


def test_send_test_event_fails_when_no_gateway_listens(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["-c", str(config.path), "send-test-event", "moncreneau", "appointment.created", "--url", url]) == 1
    assert "failed" in capsys.readouterr().err


@contextmanager
def gateway_process(config: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: `serve --processes N` spawns children
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)  # reaps it and closes its pipe


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stopped_gracefully(process: subprocess.Popen[str]) -> str:
    """SIGTERM the process; uvicorn finishes its shutdown, then re-raises the signal (exit status -15)."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert process.returncode in (0, -signal.SIGTERM), output
    return output


def journal_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_serve_receives_delivers_and_stops_cleanly(write_config: Callable[[str], Config], tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    port = free_port()
    config = write_config(f"server: {{port: {port}}}\n" + JOURNAL.format(path=journal))
    with gateway_process(config.path, "serve") as server:
        wait_until(lambda: healthy(port), "the gateway to listen")
        for event_type in ("appointment.created", "appointment.cancelled"):
            assert main(["-c", str(config.path), "send-test-event", "moncreneau", event_type]) == 0
        wait_until(lambda: len(journal_lines(journal)) == 2, "two journal lines")
        assert "Application shutdown complete" in stopped_gracefully(server)
    assert [line["event"]["type"] for line in journal_lines(journal)] == [  # type: ignore[index]
        "appointment.created",
        "appointment.cancelled",
    ]


def test_ingest_only_replica_and_a_separate_worker_share_the_store(
    write_config: Callable[[str], Config], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    port = free_port()
    config = write_config(
        f"server: {{port: {port}}}\nworker: {{poll_interval: 100ms}}\n" + JOURNAL.format(path=journal)
    )
    with gateway_process(config.path, "serve", "--no-worker") as server:
        wait_until(lambda: healthy(port), "the gateway to listen")
        assert main(["-c", str(config.path), "send-test-event", "yapp", "booking.cancelled"]) == 0
        time.sleep(0.5)  # not a wait for luck: shows that an ingest-only process delivers nothing on its own
        assert journal_lines(journal) == []
        with gateway_process(config.path, "worker") as worker:
            wait_until(lambda: len(journal_lines(journal)) == 1, "the worker to deliver")
            assert "SIGTERM received: stopping the worker" in stopped_gracefully(worker)
            assert worker.returncode == 0
        assert "Application shutdown complete" in stopped_gracefully(server)


def test_serve_processes_share_the_port_the_store_and_the_metrics_and_a_killed_one_is_replaced(
    write_config: Callable[[str], Config], tmp_path: Path
) -> None:
    journal, port, events = tmp_path / "journal.jsonl", free_port(), 100
    config = write_config(  # quiet: nobody reads the pipe before the end
        f"server: {{port: {port}, processes: 2}}\nlogging: {{level: WARNING}}\n" + JOURNAL.format(path=journal)
    )
    body = load_samples("moncreneau.json")["appointment.created"]

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=20)) as c:
            answers = []

            async def post(n: int) -> None:
                raw, headers = moncreneau_request({**body, "id": f"evt_{n}"})
                answers.append((await c.post("/webhooks/moncreneau", content=raw, headers=headers)).status_code)

            async with anyio.create_task_group() as posts:
                for n in range(events):
                    posts.start_soon(post, n)
            return answers

    def accepted_in_scrapes(count: int) -> list[float]:
        totals = []
        for _ in range(count):  # a new connection each: the processes take turns answering
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}).text
            accepted = [line for line in text.splitlines() if line.startswith("gateway_webhooks_total{")]
            totals.append(sum(float(line.rsplit(" ", 1)[1]) for line in accepted if 'outcome="accepted"' in line))
        return totals

    with gateway_process(config.path, "serve") as server:
        wait_until(lambda: healthy(port) and len(serving_children(server.pid)) >= 2, "two serving processes")
        assert anyio.run(post_all) == [202] * events
        before = accepted_in_scrapes(6)
        first = serving_children(server.pid)
        killed = max(first)
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: killed not in serving_children(server.pid) and len(serving_children(server.pid)) >= len(first),
            "a replacement",
        )
        wait_until(lambda: healthy(port), "the replacement to listen")
        after = accepted_in_scrapes(6)
        wait_until(lambda: len({str(line["event"]) for line in journal_lines(journal)}) == events, "every delivery")
        output = stopped_gracefully(server)
    print(f"{events} posted on 20 connections, all 202; accepted counted by scrapes {before}, after a kill {after}")
    assert before == after == [float(events)] * 6, output


def test_serve_processes_that_cannot_start_stop_the_supervisor_with_an_error(tmp_path: Path) -> None:
    (tmp_path / "occupied").write_text("a file where the database's folder should be")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
server: {{port: {free_port()}, processes: 2}}
storage: {{url: "sqlite:///{tmp_path}/occupied/gateway.db"}}
sources:
  moncreneau: {{type: moncreneau, secrets: [s3cret]}}
"""
    )
    with gateway_process(config, "serve") as server:
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 3  # uvicorn's exit status when its one process cannot start
    assert "failed to start, stopping the parent process" in output and "occupied" in output


def test_serve_believes_x_forwarded_for_only_from_the_configured_trusted_proxies(tmp_path: Path) -> None:
    port, config = free_port(), tmp_path / "config.yaml"
    config.write_text(
        f"""
server: {{port: {port}}}
storage: {{url: "sqlite:///{tmp_path}/gateway.db"}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], allow_ips: [10.0.0.0/8]}}
"""
    )
    raw, headers = moncreneau_request(load_samples("moncreneau.json")["appointment.created"])
    with gateway_process(config, "serve") as server:
        wait_until(lambda: healthy(port), "the gateway to listen")
        forged = {**headers, "X-Forwarded-For": "10.1.2.3"}  # 127.0.0.1 is not a trusted proxy here
        answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=forged)
        stopped_gracefully(server)
    assert answer.status_code == 403 and "127.0.0.1 may not post" in answer.json()["detail"]


def test_a_serving_process_keeps_its_start_up_objects_out_of_garbage_collections(
    write_config: Callable[[str], Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config("")
    monkeypatch.setenv(SERVED_CONFIG, str(config.path))
    monkeypatch.setenv(SERVED_WITHOUT_WORKER, "True")
    thresholds = gc.get_threshold()
    try:
        served_app()
        assert gc.get_freeze_count() > 10_000 and gc.get_threshold()[0] == 50_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_serve_refuses_a_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sinks:\n  crm: {type: htp}\n")
    with gateway_process(config, "serve") as server:
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 2
    assert (
        "sinks.crm.type: unknown sink type 'htp' (did you mean http?); "
        "installed: caldav, file, http, sendgrid_email, smtp_email, twilio_sms" in output
    )


def test_serve_refuses_fewer_than_one_process(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("")
    assert main(["-c", str(config.path), "serve", "--processes", "0"]) == 2
    assert "--processes 0: serve needs at least one process" in capsys.readouterr().err


def test_migrate_brings_a_postgresql_schema_up_to_date_and_serve_refuses_one_behind(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{url: '{postgres_url}'}}\n")
    with gateway_process(config, "serve", "--port", str(free_port())) as server:
        output, _ = server.communicate(timeout=30)
    assert server.returncode != 0
    assert (
        f"the schema is at version 0, this gateway needs {SCHEMA_VERSION}; run `appointment-gateway migrate`" in output
    )
    assert main(["-c", str(config), "migrate"]) == 0
    assert f"applied: {', '.join(name for _, name in MIGRATIONS)}" in capsys.readouterr().out
    assert main(["-c", str(config), "migrate"]) == 0
    assert "the schema is up to date" in capsys.readouterr().out


def test_migrate_reports_an_unreachable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{url: 'postgresql://gateway:pw@127.0.0.1:{free_port()}/gateway'}}\n")
    assert main(["-c", str(config), "migrate"]) == 1
    assert "cannot connect" in capsys.readouterr().err


@pytest.mark.anyio
async def test_the_admin_commands_work_on_the_configured_store(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import running_gateway

    async with receiver() as crm:
        crm.default = Answer(422, body=b"refused")
        config = write_config(
            f"sinks:\n  crm: {{type: http, options: {{url: '{crm.url}'}}}}\nroutes:\n  - sinks: [crm]\n"
        )
        async with running_gateway(config) as gateway:
            body = load_samples("moncreneau.json")["appointment.created"]
            event_id = (await gateway.post_moncreneau(body)).json()["event_id"]
            await gateway.worker.run_due()

    async def run(*args: str) -> tuple[int, str, str]:
        code = await anyio.to_thread.run_sync(main, ["-c", str(config.path), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    async def answer(*args: str) -> Any:
        code, out, err = await run(*args)
        assert code == 0, err
        return json.loads(out)

    listed = await answer("events", "list", "--source", "moncreneau", "--status", "dead")
    assert [e["id"] for e in listed["events"]] == [event_id]
    shown = await answer("events", "show", event_id)
    assert shown["deliveries"][0]["attempt_log"][0]["status_code"] == 422
    (letter,) = (await answer("dead-letters", "list", "--sink", "crm"))["dead_letters"]
    dry_run = await answer("dead-letters", "replay", "--sink", "crm", "--dry-run")
    assert dry_run == {"dry_run": True, "matched": 1, "requeued": 0}
    assert await answer("dead-letters", "retry", letter["delivery_id"]) == {"requeued": [letter["delivery_id"]]}
    code, _, err = await run("replay", event_id)
    assert (code, err) == (
        1,
        "nothing_to_replay: no finished delivery to replay: they are all still pending, or none exist\n",
    )
    assert await answer("purge", "--older-than", "0s") == {"deleted": 0, "older_than_seconds": 0.0}  # still pending
    assert (await run("dead-letters", "discard", letter["delivery_id"]))[0] == 1  # no longer dead
    assert (await run("events", "show", "nope"))[2] == "unknown_event: no event with id 'nope'\n"
    timeline = await answer("appointments", "show", "moncreneau", "12345")
    assert [(e["id"], [d["status"] for d in e["deliveries"]]) for e in timeline["events"]] == [(event_id, ["pending"])]
    assert (await run("appointments", "show", "moncreneau", "9"))[2] == (
        "unknown_appointment: no event of appointment '9' from source 'moncreneau'\n"
    )
    assert "since: Input should be a valid datetime" in (await run("events", "list", "--since", "last week"))[2]
    assert await answer("sinks", "pause", "crm", "--reason", "CRM upgrade") == {"sink": "crm", "state": "paused"}
    (crm_sink,) = (await answer("sinks", "list"))["sinks"]
    assert (crm_sink["state"], crm_sink["paused_because"], crm_sink["queue_depth"]) == ("paused", "CRM upgrade", 1)
    assert await answer("sinks", "resume", "crm") == {"sink": "crm", "state": "running"}
    assert (await run("sinks", "pause", "sms"))[2] == "unknown_sink: no sink named 'sms'; sinks: crm\n"
