"""``wharfd``: dockerd's command line, daemon.json, sockets, pid file, signals, sd_notify.

Phases (uvicorn's, with an ``asyncio.Event`` instead of a polling loop):

1. parse flags, read the config file, merge with dockerd's rules; ``--validate`` stops here;
2. logging; take ``NOTIFY_SOCKET``/``LISTEN_*`` out of the environment;
3. lock the pid file; bind every ``-H`` socket (mode 0660 root:<group>) and listen, so
   early clients queue instead of being refused;
4. on uvloop: build the app; start it (the engine starts in the app's startup), then
   accept on every socket; ``READY=1``;
5. wait for SIGTERM/SIGINT; ``STOPPING=1``; stop accepting, let in-flight requests finish
   within ``shutdown-timeout``, cancel the rest, close the engine;
6. remove the socket files we created, release the pid file.

Live-restore is on by default, so containers keep running across a daemon stop; with
``--live-restore=false`` the engine stops them in ``close()``. A third SIGTERM/SIGINT
exits at once without cleanup, as dockerd does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from api.listeners import ListenerError, close_listeners, open_listeners, parse_host
from api.metrics import split_address
from api.notify import Notifier
from api.pidfile import PidFile, PidFileLocked
from api.reloading import RELOADER, ConfigReload, LoadConfig
from api.server import ApiServer, Listener
from api.tlsconfig import (
    DEFAULT_TLS_HOST,
    TLSConfigError,
    check_tcp_exposure,
    resolve_tls,
    server_context,
    tls_enabled,
)
from api.versioning import API_VERSION
from engine.config import DEFAULT_CONFIG_FILE, EngineConfig, config_keys
from engine.system.info import ENGINE_VERSION

log = logging.getLogger("wharfd")

AppFactory = Callable[[EngineConfig], web.Application]


class ConfigError(Exception):
    """The configuration cannot be used; the message is printed as is."""


# --- flags ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    key: str  # the daemon.json key it sets
    kind: str  # str | bool | int | list | map | runtime | pool
    help: str
    metavar: str | None = None


FLAGS: tuple[Flag, ...] = (
    Flag(("-H", "--host"), "hosts", "list", "daemon socket(s) to listen on (unix://, tcp://, fd://)"),
    Flag(("--tls",), "tls", "bool", "use TLS on tcp:// sockets; implied by --tlsverify"),
    Flag(("--tlsverify",), "tlsverify", "bool", "use TLS and require client certificates"),
    Flag(("--tlscacert",), "tlscacert", "str", "trust client certs signed only by this CA"),
    Flag(("--tlscert",), "tlscert", "str", "TLS certificate file (~/.docker/cert.pem)"),
    Flag(("--tlskey",), "tlskey", "str", "TLS key file (~/.docker/key.pem)"),
    Flag(("--data-root",), "data-root", "str", "root of persistent state (/var/lib/wharfd)"),
    Flag(("--exec-root",), "exec-root", "str", "root of runtime state (/run/wharfd)"),
    Flag(("-p", "--pidfile"), "pidfile", "str", "pid file (<exec-root>/wharfd.pid)"),
    Flag(("-D", "--debug"), "debug", "bool", "enable debug mode"),
    Flag(("-l", "--log-level"), "log-level", "str", "debug|info|warn|error|fatal"),
    Flag(("-G", "--group"), "group", "str", "group owning the unix socket (docker)"),
    Flag(("--default-runtime",), "default-runtime", "str", "default OCI runtime (runc)"),
    Flag(("--add-runtime",), "runtimes", "runtime", "register a runtime", "NAME=PATH"),
    Flag(("--live-restore",), "live-restore", "bool", "keep containers running (default true)"),
    Flag(("--shutdown-timeout",), "shutdown-timeout", "int", "seconds for a graceful stop"),
    Flag(("--experimental",), "experimental", "bool", "enable experimental features"),
    Flag(("--seccomp-profile",), "seccomp-profile", "str", "default seccomp profile path"),
    Flag(("--no-new-privileges",), "no-new-privileges", "bool", "no-new-privileges default"),
    Flag(("--default-shm-size",), "default-shm-size", "str", "default /dev/shm size (64M)"),
    Flag(("--cgroup-parent",), "cgroup-parent", "str", "parent cgroup for containers"),
    Flag(("--insecure-registry",), "insecure-registries", "list", "plain-HTTP registry"),
    Flag(("--registry-mirror",), "registry-mirrors", "list", "Docker Hub mirror"),
    Flag(("--label",), "labels", "list", "daemon label (key=value)"),
    Flag(("--metrics-addr",), "metrics-addr", "str", "serve Prometheus /metrics on HOST:PORT"),
    Flag(("--log-driver",), "log-driver", "str", "default container log driver"),
    Flag(("--log-opt",), "log-opts", "map", "log driver option", "KEY=VALUE"),
    Flag(("--dns",), "dns", "list", "DNS server for containers"),
    Flag(("--dns-opt",), "dns-opts", "list", "DNS option for containers"),
    Flag(("--dns-search",), "dns-search", "list", "DNS search domain for containers"),
    Flag(("-b", "--bip"), "bip", "str", "address of the default bridge (CIDR)"),
    Flag(
        ("--default-address-pool",),
        "default-address-pools",
        "pool",
        "network pool",
        "base=CIDR,size=N",
    ),
    Flag(("--mtu",), "mtu", "int", "MTU of container networks"),
    Flag(("--iptables",), "iptables", "bool", "manage firewall rules (default true)"),
    Flag(("--ip-forward",), "ip-forward", "bool", "enable IP forwarding (default true)"),
    Flag(("--ip-masq",), "ip-masq", "bool", "masquerade outgoing traffic (default true)"),
    Flag(("--icc",), "icc", "bool", "inter-container communication (default true)"),
    Flag(("--max-concurrent-downloads",), "max-concurrent-downloads", "int", "per pull"),
    Flag(("--max-concurrent-uploads",), "max-concurrent-uploads", "int", "per push"),
)

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_bool(value: str) -> bool:
    """strconv.ParseBool, as pflag parses ``--flag=value``."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {value!r}")


def _key_value(value: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, rest


def _pool(value: str) -> dict[str, Any]:
    fields = dict(_key_value(part) for part in value.split(",") if part)
    if set(fields) != {"base", "size"} or not fields["size"].isdigit():
        raise argparse.ArgumentTypeError(f"invalid address pool {value!r}: want base=CIDR,size=N")
    return {"base": fields["base"], "size": int(fields["size"])}


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS everywhere: a flag appears in the namespace only when it was given, which is
    # what the "set both as a flag and in the file" check needs.
    parser = argparse.ArgumentParser(
        prog="wharfd",
        description="A container engine that speaks the Docker Engine API.",
        argument_default=argparse.SUPPRESS,
    )
    for flag in FLAGS:
        dest = flag.key.replace("-", "_")
        if flag.kind == "bool":
            parser.add_argument(
                *flag.names, dest=dest, nargs="?", const=True, type=go_bool, help=flag.help
            )
        elif flag.kind == "int":
            parser.add_argument(*flag.names, dest=dest, type=int, help=flag.help)
        elif flag.kind == "str":
            parser.add_argument(*flag.names, dest=dest, help=flag.help)
        else:
            convert: dict[str, Callable[[str], Any]] = {
                "list": str,
                "map": _key_value,
                "runtime": _key_value,
                "pool": _pool,
            }
            parser.add_argument(
                *flag.names,
                dest=dest,
                action="append",
                type=convert[flag.kind],
                metavar=flag.metavar,
                help=flag.help + " (repeatable)",
            )
    parser.add_argument(
        "--config-file", dest="config_file", help=f"daemon.json ({DEFAULT_CONFIG_FILE})"
    )
    parser.add_argument(
        "--validate", dest="validate", action="store_true", help="check the configuration, exit"
    )
    parser.add_argument("-v", "--version", dest="version", action="store_true", help="version")
    return parser


def flag_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """daemon.json-shaped values of the flags that were given."""
    given = vars(namespace)
    values: dict[str, Any] = {}
    for flag in FLAGS:
        dest = flag.key.replace("-", "_")
        if dest not in given:
            continue
        value = given[dest]
        if flag.kind == "map":
            value = dict(value)
        elif flag.kind == "runtime":
            value = {name: {"path": path} for name, path in value}
        values[flag.key] = value
    return values


# --- config file and merge ------------------------------------------------------------


def go_format(value: Any) -> str:
    """How Go's %v prints a decoded JSON value (dockerd's conflict message uses it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        items = " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value))
        return f"map[{items}]"
    return str(value)


def read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    """The file's top-level object; {} when the default file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"open {path}: no such file or directory") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"open {path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("the configuration file must contain a JSON object")
    return data


def merge(file_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """dockerd's rules: unknown keys and keys given twice are errors that name them."""
    unknown = sorted(set(file_values) - config_keys())
    if unknown:
        raise ConfigError(
            "the following directives don't match any configuration option: " + ", ".join(unknown)
        )
    both = sorted(set(file_values) & set(flags))
    if both:
        conflicts = [
            f"{key}: (from flag: {go_format(flags[key])}, from file: {go_format(file_values[key])})"
            for key in both
        ]
        raise ConfigError(
            "the following directives are specified both as a flag and in the configuration "
            "file: " + ", ".join(conflicts)
        )
    return {**file_values, **flags}


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def config_file_path(namespace: argparse.Namespace) -> Path:
    return Path(namespace.config_file) if "config_file" in namespace else DEFAULT_CONFIG_FILE


def load_config(namespace: argparse.Namespace) -> EngineConfig:
    return load_config_and_keys(namespace)[0]


def load_config_and_keys(namespace: argparse.Namespace) -> tuple[EngineConfig, frozenset[str]]:
    """The merged configuration and the keys the file itself set (a reload needs both)."""
    explicit = "config_file" in namespace
    path = config_file_path(namespace)
    flags = flag_values(namespace)
    try:
        file_values = read_config_file(path, explicit)
        merged = merge(file_values, flags)
        config = EngineConfig.model_validate(merged)
        if not merged.get("hosts") and tls_enabled(config):
            # dockerd: with TLS on and no -H at all, the one socket is tcp://localhost:2376
            config = config.model_copy(update={"hosts": [DEFAULT_TLS_HOST]})
        for host in config.hosts:
            parse_host(host)
        if config.metrics_addr:
            split_address(config.metrics_addr)
    except ConfigError as exc:
        raise ConfigError(f"unable to configure the daemon with file {path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_validation_text(exc)}") from None
    except (ListenerError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return config, frozenset(file_values)


# --- logging --------------------------------------------------------------------------


class LogfmtFormatter(logging.Formatter):
    """dockerd's (logrus) text format: time="…" level=info msg="…"."""

    _LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.created % 1 * 1_000_000):06d}Z"
        level = self._LEVELS.get(record.levelname, record.levelname.lower())
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        text = f'time="{stamp}" level={level} msg={json.dumps(message, ensure_ascii=False)}'
        if record.levelno <= logging.DEBUG:
            text += f" module={record.name}"
        return text


_PY_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def setup_logging(config: EngineConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    logging.getLogger().handlers[:] = [handler]
    apply_log_level(config)


def apply_log_level(config: EngineConfig) -> None:
    """debug / log-level (at start and on reload)."""
    level = logging.DEBUG if config.debug else _PY_LEVELS[config.log_level]
    logging.getLogger().setLevel(level)
    # One line per request is dockerd's debug-level "Calling GET /_ping", not info.
    access = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    logging.getLogger("aiohttp.access").setLevel(access)


# --- serving --------------------------------------------------------------------------


class Signals:
    """SIGTERM/SIGINT set ``stop``; the third one exits at once. SIGHUP calls ``on_hup``
    (a configuration reload, api.reloading)."""

    FORCE_AFTER = 3

    def __init__(self, stop: asyncio.Event, on_hup: Callable[[], None] | None = None) -> None:
        self._stop = stop
        self._count = 0
        self._on_hup_callback = on_hup

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in self.HANDLED:
            loop.remove_signal_handler(signum)

    def _on_stop(self, signum: int) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count >= self.FORCE_AFTER:
            log.error("forcing shutdown without cleanup; %d interrupts received", self._count)
            os._exit(128 + signum)
        log.info("processing signal %s", name)
        self._stop.set()

    def _on_hup(self) -> None:
        if self._on_hup_callback is None:
            log.warning("not serving yet; ignoring SIGHUP")
            return
        self._on_hup_callback()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve(
    config: EngineConfig,
    app_factory: AppFactory,
    listeners: Sequence[Listener],
    notifier: Notifier,
    reload_source: ReloadSource | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    hup = _HupTarget()
    signals = Signals(stop, hup)
    signals.install(loop)
    try:
        return await _serve_until(
            stop, config, app_factory, listeners, notifier, reload_source, hup
        )
    finally:
        signals.uninstall(loop)


@dataclass(frozen=True)
class ReloadSource:
    """How to read the configuration again: the file and the start-up flags."""

    load: LoadConfig
    config_file: str


class _HupTarget:
    """What SIGHUP does: nothing until the server is up, then a reload."""

    def __init__(self) -> None:
        self.reload: ConfigReload | None = None

    def __call__(self) -> None:
        if self.reload is None:
            log.warning("SIGHUP before the daemon finished starting; ignored")
            return
        self.reload.trigger()


async def _serve_until(
    stop: asyncio.Event,
    config: EngineConfig,
    app_factory: AppFactory,
    listeners: Sequence[Listener],
    notifier: Notifier,
    reload_source: ReloadSource | None = None,
    hup: _HupTarget | None = None,
) -> int:
    server: ApiServer | None = None
    try:
        app = app_factory(config)
        server = ApiServer(app, listeners, config.shutdown_timeout)
        await server.start()
    except Exception as exc:
        log.error("failed to start daemon: %s", exc, exc_info=config.debug)
        if server is not None:
            await server.stop()
        return 1
    running = server

    def apply_process(new: EngineConfig) -> None:
        apply_log_level(new)
        running.shutdown_timeout = new.shutdown_timeout

    reload = None
    if reload_source is not None and hup is not None:
        reload = ConfigReload(
            load=reload_source.load,
            reloader=app.get(RELOADER),
            apply_process=apply_process,
            notifier=notifier,
            config_file=reload_source.config_file,
        )
        hup.reload = reload
    if not stop.is_set():
        notifier.notify("READY=1")
        log.info("daemon has completed initialization")
    await stop.wait()
    if hup is not None:
        hup.reload = None
    if reload is not None:
        await reload.close()
    notifier.notify("STOPPING=1")
    log.info(
        "stopping: no new connections; waiting up to %ss for requests", server.shutdown_timeout
    )
    await server.stop()
    log.info("daemon shut down")
    return 0


def default_app_factory(config: EngineConfig) -> web.Application:
    from api.app import make_app
    from engine.daemon import Engine

    return make_app(Engine(config))


def tcp_tls_context(config: EngineConfig) -> ssl.SSLContext | None:
    """The TLS context of the tcp:// sockets (None: TLS off), after refusing a TCP socket
    that would expose the API without client verification (api.tlsconfig)."""
    for spec in (parse_host(host) for host in config.hosts):
        if spec.scheme == "tcp":
            check_tcp_exposure(config, spec.tcp_host_port[0], str(spec))
    tls = resolve_tls(config, os.environ)
    return server_context(tls) if tls is not None else None


def run(
    config: EngineConfig, app_factory: AppFactory, reload_source: ReloadSource | None = None
) -> int:
    notifier = Notifier.from_environ(os.environ)
    try:
        tls = tcp_tls_context(config)
    except TLSConfigError as exc:
        log.error("failed to start daemon: %s", exc)
        return 1
    pidfile = PidFile(config.effective_pidfile())
    try:
        pidfile.acquire()
    except (PidFileLocked, OSError) as exc:
        log.error("failed to start daemon: %s", exc)
        return 1
    listeners: list[Listener] = []
    try:
        listeners = open_listeners(config.hosts, config.group, os.environ, tls)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(config, app_factory, listeners, notifier, reload_source))
    except ListenerError as exc:
        log.error("failed to start daemon: %s", exc)
        return 1
    finally:
        close_listeners(listeners)
        pidfile.release()


def main(argv: Sequence[str] | None = None, *, app_factory: AppFactory | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    if getattr(namespace, "version", False):
        print(f"wharfd version {ENGINE_VERSION}, API version {API_VERSION}")
        return 0
    try:
        config = load_config(namespace)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if getattr(namespace, "validate", False):
        print("configuration OK")
        return 0
    setup_logging(config)
    source = ReloadSource(
        load=lambda: load_config_and_keys(namespace),
        config_file=str(config_file_path(namespace)),
    )
    return run(config, app_factory or default_app_factory, source)


if __name__ == "__main__":
    sys.exit(main())
