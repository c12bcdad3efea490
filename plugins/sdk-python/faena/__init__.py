"""Write a faena portal flow in Python: subclass `Plugin`, bind `WitWorld = export(...)`,
build it with componentize-py.

    from faena import Plugin, Operation, Context, export

    class Hello(Plugin):
        name = "hello"
        version = "0.1.0"
        description = "Says hello"
        operations = [Operation("run", "Greets someone", {"type": "object"})]

        def run(self, operation: str, input: dict, ctx: Context):
            return {"greeting": f"hello {input.get('name')}"}

    WitWorld = export(Hello)

The plugin is instantiated once when the component is built (componentize-py runs
the module then and snapshots it): import every module you need at the top of the
file, since the component has no filesystem to import from later. Each item then runs
in a fresh copy of that snapshot; in a session, calls share one instance.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

from componentize_py_types import Err
from wit_world.imports import browser, host, types

from . import http
from .errors import ApplicationError, BusinessError, FaenaError, host_call
from .page import Cookie, Page

Checkpoint = types.Checkpoint

__all__ = [
    "ApplicationError", "BusinessError", "Checkpoint", "Context", "Cookie", "FaenaError",
    "Operation", "Page", "Plugin", "export", "http", "keep_state", "log", "progress",
    "required_setting", "save_artifact", "secret", "setting", "step", "warn",
]


@dataclass
class Operation:
    """One operation: its input's JSON Schema and what it needs from the host."""

    name: str
    description: str
    schema: dict = field(default_factory=lambda: {"type": "object"})
    browser: bool = False
    http_hosts: Sequence[str] = ()
    secrets: Sequence[str] = ()


@dataclass
class Context:
    """Where this run stands: ids, attempt, idempotency key and the checkpoints the
    earlier attempts recorded (oldest first)."""

    job_id: str
    item_id: str
    attempt: int
    #: The same on every attempt of the item: look it up in the portal before acting.
    idempotency_key: str
    last_checkpoint: Optional[Checkpoint]
    checkpoints: list[Checkpoint]
    session_id: Optional[str]
    resource: Optional[str]

    def passed(self, name: str) -> bool:
        """Whether any earlier attempt recorded the step `name`."""
        return any(c.name == name for c in self.checkpoints)

    def state_of(self, name: str) -> Optional[str]:
        """The state the latest earlier attempt to record step `name` saved with it."""
        return next((c.state for c in reversed(self.checkpoints) if c.name == name), None)


class Plugin:
    """A portal flow: set the class attributes, implement `run`."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    operations: ClassVar[list[Operation]] = []

    def run(self, operation: str, input: Any, ctx: Context) -> Any:
        """Run one item: `input` is the item's JSON input; return its JSON-able result,
        or raise BusinessError / ApplicationError."""
        raise BusinessError(f"{self.name} has no operation `{operation}`")


# --- host functions -----------------------------------------------------------------


def step(name: str, state: Optional[str] = None) -> None:
    """Record a checkpoint; durable when this returns. A retry finds it in
    `ctx.checkpoints` (`ctx.passed(name)`, `ctx.state_of(name)`)."""
    host_call(host.step, name, state)


def progress(data: Any) -> None:
    """Publish progress (any JSON-able value) on the live feed."""
    host_call(host.progress, json.dumps(data, ensure_ascii=False))


def secret(name: str) -> str:
    """A secret granted to this plugin (declare it in the operation's `secrets`)."""
    return host_call(host.secret, name)


def setting(name: str) -> Optional[str]:
    """A plain setting from `[plugins.NAME.settings]`, or None."""
    return host.setting(name)


def required_setting(name: str) -> str:
    """A setting the plugin cannot work without; missing or empty is an
    ApplicationError with code `missing-setting`."""
    value = setting(name)
    if not value:
        raise ApplicationError(
            f"setting `{name}` is not configured for this plugin (`[plugins.<name>.settings]`)",
            code="missing-setting",
        )
    return value


def save_artifact(name: str, content_type: str, data: bytes | str) -> str:
    """Store a file of the run; returns the artifact id."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return host_call(host.save_artifact, name, content_type, bytes(data))


def log(message: str) -> None:
    """An info line in the item's log (`print` goes there too)."""
    host.log(host.Level.INFO, str(message))


def warn(message: str) -> None:
    host.log(host.Level.WARN, str(message))


def keep_state() -> None:
    """Keep the browser context's cookies and storage and the HTTP cookie jar across
    this item's attempts (a portal session survives a crash). Call before Page.open()."""
    host_call(browser.keep_state)


# --- the component's exports ----------------------------------------------------------


class _LogWriter:
    """`sys.stdout` during a run: each printed line becomes a line of the item's log."""

    def __init__(self) -> None:
        self._buf = ""

    def write(self, s: str) -> int:
        *lines, self._buf = (self._buf + s).split("\n")
        for line in lines:
            log(line)
        return len(s)

    def flush(self) -> None:
        if self._buf:
            log(self._buf)
            self._buf = ""


def _short(path: str) -> str:
    """`/1/faena/page.py` -> `faena/page.py`: componentize-py mounts each `-p` folder
    (and the standard library, `/python`) at the root when it builds."""
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "" and (parts[1].isdigit() or parts[1] == "python"):
        return "/".join(parts[2:])
    return parts[-1]


def _unexpected(e: BaseException) -> types.PluginError:
    """An exception the plugin did not turn into a faena error: an application error
    naming it and where it was raised; the traceback goes to the item's log."""
    raw, tb = [], e.__traceback__
    while tb is not None:
        raw.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    e.__traceback__ = None  # frees the frames' locals (a MemoryError's big list, say)
    # The first frame is the SDK's own `run`; a file is named without the build's paths.
    frames = [f"{_short(c.co_filename)}:{n} in {c.co_name}" for c, n in raw[1:]]
    what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, MemoryError):
        what += " (the plugin's memory limit, `memory_mib`, was reached)"
    try:
        host.log(host.Level.ERROR, "\n  ".join(["Traceback (most recent call last):", *frames, what]))
    except BaseException:
        pass
    message = f"{what} (at {frames[-1]})" if frames else what
    return types.PluginError(types.ErrorKind.APPLICATION, message, None, None)


def export(plugin: type[Plugin]) -> type:
    """The class componentize-py exports as the `flow` world: `WitWorld = export(P)`."""
    for attr in ("name", "version"):
        if not isinstance(getattr(plugin, attr, None), str) or not getattr(plugin, attr):
            raise TypeError(f"{plugin.__name__}.{attr} must be a non-empty string")
    if not plugin.operations:
        raise TypeError(f"{plugin.__name__}.operations is empty")
    info = types.PluginInfo(
        plugin.name,
        plugin.version,
        plugin.description,
        [
            types.Operation(
                op.name,
                op.description,
                json.dumps(op.schema),
                types.Capabilities(op.browser, list(op.http_hosts), list(op.secrets)),
            )
            for op in plugin.operations
        ],
    )

    class WitWorld:
        def __init__(self) -> None:
            self.plugin = plugin()

        def describe(self) -> types.PluginInfo:
            return info

        def run(self, operation: str, input: str, context: types.Context) -> str:
            stdout, sys.stdout = sys.stdout, _LogWriter()
            try:
                try:
                    value = json.loads(input)
                except ValueError as e:
                    raise BusinessError(f"input is not JSON: {e}") from None
                ctx = Context(
                    job_id=context.job_id,
                    item_id=context.item_id,
                    attempt=context.attempt,
                    idempotency_key=context.idempotency_key,
                    last_checkpoint=context.last_checkpoint,
                    checkpoints=host.checkpoints(),
                    session_id=context.session_id,
                    resource=context.resource,
                )
                result = self.plugin.run(operation, value, ctx)
                try:
                    return json.dumps(result, ensure_ascii=False)
                except (TypeError, ValueError) as e:
                    raise ApplicationError(f"the result is not JSON: {e}") from None
            except FaenaError as e:
                raise Err(e.to_wit()) from None
            except Err as e:
                if not isinstance(e.value, types.PluginError):
                    raise Err(_unexpected(e)) from None
                raise  # a host error from a raw binding call, passed on as it is
            except BaseException as e:  # noqa: BLE001 - every failure must become an answer
                raise Err(_unexpected(e)) from None
            finally:
                try:
                    sys.stdout.flush()
                finally:
                    sys.stdout = stdout

    WitWorld.__qualname__ = WitWorld.__name__ = f"WitWorld[{plugin.__name__}]"
    return WitWorld
