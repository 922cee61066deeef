"""The YAML configuration: `${VAR}` interpolation, validation, and errors that name the file, the key and the fix."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import pluggy
import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, field_validator

from gateway._fields import annotation_at, model_in
from gateway.circuit import CircuitPolicy
from gateway.durations import Duration
from gateway.exceptions import ConfigError
from gateway.ingress import RateLimit
from gateway.plugins import sink_types, source_types
from gateway.quiet_hours import QuietHours
from gateway.retry import RetryPolicy
from gateway.routing import Route
from gateway.sinks import Sink, SinkOptions
from gateway.sources.base import ProviderZone, Source, SourceOptions

_VARIABLE = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
T = TypeVar("T")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    processes: int = Field(
        1, ge=1, description="Processes serving the port (each with its own worker unless --no-worker); one per core"
    )
    max_body_bytes: int = Field(1_048_576, ge=1, description="Larger webhook bodies are answered 413")
    read_timeout: Duration = Field(10.0, gt=0, description="A body not received within this is answered 408")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list, description="Peers whose X-Forwarded-For is believed (your load balancers)"
    )
    header_timeout: Duration = Field(
        10.0,
        gt=0,
        description="A request's headers not received within this are answered 408, and the connection closed",
    )
    max_header_bytes: int = Field(16384, ge=1024, description="Larger request headers are answered 431")
    max_connections: int = Field(
        1000, ge=1, description="Open connections per serving process (lowered to fit the open-file limit)"
    )


class StorageConfig(_Strict):
    url: str = Field(
        "sqlite:///gateway.db",
        description="sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:password@host:5432/db",
    )
    pool_min: int = Field(1, ge=0, description="PostgreSQL connections kept open")
    pool_max: int = Field(10, ge=1, description="PostgreSQL connections at most")
    busy_timeout: Duration = Field(
        2.0,
        gt=0,
        description="How long a write waits for storage held by another (a lock, a full pool) before the "
        "webhook is answered 503; keep it under the providers' deadline (moncreneau: 5s)",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url.startswith(("postgresql://", "postgres://")) or (url.startswith("sqlite:///") and url != "sqlite:///"):
            return url
        scheme = url.partition("://")[0] if "://" in url else url[:20]
        raise ValueError(
            f"{scheme!r} is not a storage this gateway knows; write e.g. sqlite:///data/gateway.db or "
            "postgresql://gateway:${DB_PASSWORD}@db:5432/gateway"
        )


class WorkerConfig(_Strict):
    enabled: bool = Field(True, description="Run the delivery worker inside `serve`")
    poll_interval: Duration = Field(1.0, gt=0, description="How often the worker looks for due deliveries")
    lease: Duration = Field(
        10.0,
        gt=0,
        description="A claim lasts this long, renewed every third of it while its worker holds it: a worker that "
        "dies loses its claims this long after, to any other",
    )
    shutdown_grace: Duration = Field(10.0, ge=0, description="How long in-flight attempts may finish at shutdown")


class AdminConfig(_Strict):
    enabled: bool = True
    token: str | None = Field(None, description="Bearer token, e.g. ${GATEWAY_ADMIN_TOKEN}; required off loopback")

    @field_validator("token")
    @classmethod
    def _empty_is_none(cls, token: str | None) -> str | None:
        return token or None  # `${GATEWAY_ADMIN_TOKEN:-}` left unset


class ConsoleConfig(_Strict):
    enabled: bool = Field(True, description="Serve the operator console at /console (only while admin.enabled)")
    timezone: ProviderZone = Field("UTC", description="IANA zone the console shows times in")
    session_lifetime: Duration = Field(12 * 3600.0, gt=0, description="How long a console sign-in lasts")


class LoggingConfig(_Strict):
    format: Literal["json", "text"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    redact: bool = Field(True, description="Mask customers' names, phones and emails in logs")
    libraries: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Level of the sinks' libraries' loggers (twilio, sendgrid, httpx, aiohttp...)"
    )


class RetentionConfig(_Strict):
    max_age: Duration = Field(30 * 86400.0, gt=0, description="Events, attempts and dead letters older are purged")
    interval: Duration = Field(3600.0, gt=0, description="How often serve and worker processes purge")
    batch: int = Field(500, ge=1, description="Events deleted per transaction")
    tombstones: Duration = Field(
        365 * 86400.0,
        gt=0,
        description="How long a purged event's provider id is remembered, so that the same request replayed is "
        "answered as a duplicate and delivered nowhere",
    )


class AlertsConfig(_Strict):
    debounce: Duration = Field(900.0, ge=0, description="At most one alert of a type about a sink this often")
    backlog_late_after: Duration | None = Field(
        900.0, gt=0, description="gateway.sink.backlog_late when a sink's oldest due delivery waited longer"
    )


class SinkConfig(_Strict):
    type: str
    options: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    concurrency: int = Field(4, ge=1, description="Attempts in flight at once for this sink, in each worker process")
    timeout: Duration = Field(10.0, gt=0, description="An attempt running longer is abandoned and retried")
    rate_limit: RateLimit | None = Field(
        None, description="{per_second, burst}: at most this rate to the sink, shared by every process (in the store)"
    )
    circuit: CircuitPolicy | None = Field(
        None, description="{failures, within, probe_every}: stop using a failing sink, probe it until it recovers"
    )
    supersede: bool | None = Field(
        None,
        description="Withdraw a message still waiting when a later event of its appointment makes it stale "
        "(default: yes for messaging sinks, no for http and calendars, which get every event in order)",
    )
    quiet_hours: QuietHours | None = Field(
        None, description='{from: "21:00", to: "08:00"}: messages due inside wait until they end (appointment\'s zone)'
    )
    fallback: str | None = Field(
        None, description="Another sink that sends the message when this one cannot reach the recipient"
    )
    on_no_recipient: Literal["skip", "dead_letter"] = Field(
        "skip", description="An event without the phone or email the message needs: skipped, or a dead letter"
    )


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sinks: dict[str, SinkConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)


@dataclass(frozen=True)
class Config:
    """A validated configuration: the file's settings, and every source and sink built from it."""

    path: Path
    settings: GatewayConfig
    sources: dict[str, Source]
    sinks: dict[str, Sink]


def load_config(path: str | Path, manager: pluggy.PluginManager) -> Config:
    """Read, interpolate and validate `path`; raise ConfigError listing every problem found."""
    path = Path(path)
    missing: list[str] = []
    raw = _interpolate(_read_yaml(path), path, missing)
    if missing:
        raise ConfigError("\n".join(missing))
    try:
        settings = GatewayConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(path, error, GatewayConfig)) from None
    problems: list[str] = []
    context = {"config_dir": path.parent}
    sources = _build_sources(settings, source_types(manager), problems, context)
    sinks = _build_sinks(settings, sink_types(manager), problems, context)
    problems += _check_routes(settings) + _check_fallbacks(settings)
    if (exposed := admin_exposure(settings.admin, settings.server)) is not None:
        problems.append(exposed)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return Config(path=path, settings=settings, sources=sources, sinks=sinks)


SECRET_KEY = re.compile(r"secret|token|password|passwd|api_key|apikey|auth|credential|feeds", re.IGNORECASE)


PLACEHOLDER = re.compile(r"change-?me", re.IGNORECASE)


def secret_keys(settings: GatewayConfig) -> list[tuple[str, str]]:
    """Every configured secret as (dotted key, value): values under a key naming one, anywhere below, and
    passwords inside URLs."""
    found: list[tuple[str, str]] = []

    def walk(value: Any, where: tuple[str | int, ...], secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*where, key), secret or bool(SECRET_KEY.search(str(key))))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, (*where, index), secret)
        elif isinstance(value, str):
            if secret:
                found.append((_dotted(where), value))
            if "://" in value and (password := urlsplit(value).password):
                found.append((_dotted(where), password))

    walk(settings.model_dump(mode="json"), (), False)
    return found


def secret_values(settings: GatewayConfig) -> list[str]:
    """Every configured secret, to be masked wherever it might be printed."""
    return [value for _, value in secret_keys(settings)]


def admin_exposure(admin: AdminConfig, server: ServerConfig, host: str | None = None) -> str | None:
    """The problem with serving the admin API on `host` (default: server.host), if any: reachable beyond loopback
    (another interface, or behind trusted proxies that forward other machines' requests) it needs a strong token."""
    host = host or server.host
    if not admin.enabled:
        return None
    reach = None if _is_loopback(host) else f"on {host}"
    if reach is None and server.trusted_proxies:
        reach = "through server.trusted_proxies"
    if reach is None:
        return None
    if admin.token is None:
        return (
            f"admin.token: the admin API would be reachable {reach} without a token; set admin.token to a secret "
            f"of {MIN_TOKEN}+ random characters (e.g. ${{GATEWAY_ADMIN_TOKEN}}), listen on 127.0.0.1 without "
            "trusted proxies, or set admin.enabled: false"
        )
    if len(admin.token) < MIN_TOKEN:
        return (
            f"admin.token: {len(admin.token)} characters is too weak for an admin API reachable {reach}; "
            f"use {MIN_TOKEN}+ random characters (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return None


MIN_TOKEN = 16


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read the configuration file ({error.strerror}); pass --config FILE"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (server, sources, sinks, routes)")
    return data


def _interpolate(node: Any, path: Path, missing: list[str], where: tuple[str | int, ...] = ()) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string value; `$$` writes a literal `$`. Each unset
    variable without a default is added to `missing`, so that they are all reported at once."""
    if isinstance(node, dict):
        return {key: _interpolate(value, path, missing, (*where, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, path, missing, (*where, index)) for index, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name, default = match.group(2), match.group(3)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(
                    f"{path}: {_dotted(where)}: environment variable {name} is not set; "
                    f"export {name}=... or write ${{{name}:-default}}"
                )
                return ""
            return default
        return value

    return _VARIABLE.sub(substitute, node)


def _build_sources(
    settings: GatewayConfig, types: dict[str, type[Source]], problems: list[str], context: dict[str, Any]
) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    for name, raw in settings.sources.items():
        where = ("sources", name)
        if not _NAME.match(name):
            problems.append(
                f"{_dotted(where)}: a source name is used in its URL; use lower-case letters, digits, - or _"
            )
            continue
        cls = _plugin_class(raw.get("type", name), types, "source", where, problems)
        if cls is None:
            continue
        options = _validate_options(cls.Options, {"type": cls.type_name, **raw}, where, problems, context)
        if isinstance(options, SourceOptions):
            sources[name] = cls(name, options)
    return sources


def _build_sinks(
    settings: GatewayConfig, types: dict[str, type[Sink]], problems: list[str], context: dict[str, Any]
) -> dict[str, Sink]:
    sinks: dict[str, Sink] = {}
    for name, sink in settings.sinks.items():
        cls = _plugin_class(sink.type, types, "sink", ("sinks", name), problems)
        if cls is None:
            continue
        options = _validate_options(cls.Options, sink.options, ("sinks", name, "options"), problems, context)
        if isinstance(options, SinkOptions):
            sinks[name] = cls(name, options, timeout=sink.timeout)
    return sinks


def _plugin_class(
    type_name: Any, types: dict[str, T], kind: str, where: tuple[str, ...], problems: list[str]
) -> T | None:
    if type_name in types:
        return types[type_name]
    guess = difflib.get_close_matches(str(type_name), types, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    installed = ", ".join(types) or "none"
    problems.append(f"{_dotted((*where, 'type'))}: unknown {kind} type {type_name!r}{hint}; installed: {installed}")
    return None


def _validate_options(
    model: type[BaseModel], raw: Any, where: tuple[str, ...], problems: list[str], context: dict[str, Any]
) -> BaseModel | None:
    """`raw` validated by a plugin's model; `context["config_dir"]` resolves relative file names."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as error:
        problems.extend(_problems(error, model, where))
        return None


def _check_fallbacks(settings: GatewayConfig) -> list[str]:
    """Each fallback names another configured sink, and following them never comes back to where it began."""
    problems = []
    for name, sink in settings.sinks.items():
        if sink.fallback is None:
            continue
        where = f"sinks.{name}.fallback"
        if sink.fallback not in settings.sinks:
            problems.append(f"{where}: no sink named {sink.fallback!r}; sinks: {', '.join(settings.sinks)}")
            continue
        seen: list[str] = [name]
        current: str | None = sink.fallback
        while current is not None and current in settings.sinks and current not in seen:
            seen.append(current)
            current = settings.sinks[current].fallback
        if current == name:
            problems.append(f"{where}: fallbacks go round in a circle ({' -> '.join([*seen, name])}); break it")
    return problems


def _check_routes(settings: GatewayConfig) -> list[str]:
    problems = []
    for index, route in enumerate(settings.routes):
        for position, sink in enumerate(route.sinks):
            if sink not in settings.sinks:
                known = ", ".join(settings.sinks) or "none configured"
                problems.append(f"routes.{index}.sinks.{position}: no sink named {sink!r}; sinks: {known}")
        for position, source in enumerate(route.sources or ()):
            if source not in settings.sources:
                known = ", ".join(settings.sources) or "none configured"
                problems.append(f"routes.{index}.sources.{position}: no source named {source!r}; sources: {known}")
    return problems


def _describe(path: Path, error: ValidationError, model: type[BaseModel]) -> str:
    return "\n".join(f"{path}: {problem}" for problem in _problems(error, model, ()))


def _problems(error: ValidationError, model: type[BaseModel], prefix: tuple[str | int, ...]) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(part for part in item["loc"] if not _is_union_tag(part))
        key = _dotted((*prefix, *loc))
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key; {_suggest(model, loc)}")
        elif item["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            given = item.get("input")
            shown = f" (got {given!r})" if isinstance(given, str | int | float | bool) else ""
            if SECRET_KEY.search(key) or (isinstance(given, str) and "://" in given and urlsplit(given).password):
                shown = ""  # a secret is never printed, not even a wrong one
            problems.append(f"{key}: {message}{shown}")
    return problems


def _suggest(model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    parent = model_in(annotation_at(model, loc[:-1]))
    allowed = list(parent.model_fields) if parent else []
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if guess:
        return f"did you mean {guess[0]}?"
    return f"allowed keys: {', '.join(allowed)}" if allowed else "remove it"


def _is_union_tag(part: str | int) -> bool:
    """pydantic puts the union member tried into error locations (`list[...]`, `str`); they are not keys."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none"})


def _dotted(parts: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in parts)
