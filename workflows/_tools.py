"""An agent's tools for one call: the specs offered to the LLM, and run(), the pipeline's ToolRunner.

run() never raises (except CancelledError): a tool that fails gives the LLM an error result naming
the tool and the reason, so the agent can apologise or try something else, and the call goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import structlog
from jsonschema import Draft202012Validator, SchemaError, ValidationError
from pebble import ProcessExpired
from yarl import URL

from pipeline import ToolCall, ToolOutcome, ToolSpec

from ._errors import ToolError, VariableError, WorkflowRuntimeError
from ._json import capped, json_safe
from ._model import (
    BUILTIN_TOOLS,
    FORM,
    MAX_RESULT_BYTES,
    TEXT_BODY_MEDIA,
    TEXT_BODY_TEMPLATES,
    URL_ORIGIN,
    HttpSpec,
    ToolDef,
    Workflow,
)
from ._template import TemplateError, render
from ._tool_processes import resolve, run_in_process
from ._variables import CallState

log = structlog.get_logger("voicerun.workflows")

Transfer = Callable[[str], Awaitable[None]]
"""Moves the caller to a phone number (E.164); given by a transport that can (LiveKit SIP)."""

E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
NO_TELEPHONY = "transfer_call needs a telephony transport (LiveKit SIP); not available in this call"

_WHOLE = re.compile(r"\{\{\s*(user|vars|args)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_EXCERPT_CHARS = 200
_MAX_SCHEMA_ERRORS = 5
# what a url's literal text keeps as written: reserved characters and the author's own %XX
_URL_LITERAL_SAFE = "/?#[]@!$&'()*+,;=:%~"
_HEADER_BREAKS = re.compile(r"[\r\n\x00]")
PYTHON_TIMEOUT_S = 10.0
"""How long a Python tool may take when its `timeout_s` is not set."""


class _ToolFailedError(WorkflowRuntimeError):
    """Internal: a tool did not succeed; the message is what the LLM and the log see."""

    def __init__(self, message: str, *, traceback: bool = False, child_traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback
        self.child_traceback = child_traceback
        """The traceback of a tool that raised in a worker process."""


async def _read_capped(name: str, resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise _ToolFailedError(
            f"tool {name}: response of {resp.content_length} bytes is over the {limit}-byte limit"
        )
    raw = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > limit:
            raise _ToolFailedError(f"tool {name}: response is over the {limit}-byte limit")
    return bytes(raw)


def _excerpt(raw: bytes) -> str:
    text = " ".join(raw[: _EXCERPT_CHARS * 4].decode("utf-8", "replace").split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


def _path(error: ValidationError) -> str:
    return "arguments" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _lookup(data: object, dotted: str) -> tuple[bool, object]:
    """The value at a dotted path (`slots.0.time`: keys of objects, indexes of arrays)."""
    node = data
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _value(scopes: Mapping[str, Mapping[str, Any]], m: re.Match[str]) -> object:
    scope, name = m.group(1), m.group(2)
    if name not in scopes[scope]:
        raise TemplateError(f"{{{{{scope}.{name}}}}} has no value (not in this call's {scope} data)")
    return scopes[scope][name]


def _render_url(template: str, scopes: Mapping[str, Mapping[str, Any]]) -> URL:
    """The URL with every template value percent-encoded for the component it is in.

    Arguments come from the LLM, which a caller can talk into anything, and user data from
    whoever starts the call: each value stays data in its path segment, query value or fragment
    (`/`, `?`, `&`, `#`, `@` encoded; a `..` cannot climb, as dots are encoded in the path).
    Templates cannot reach the scheme, user, host or port: HttpSpec refuses them there.
    """
    origin = URL_ORIGIN.match(template)
    if origin is None or "{{" in origin.group():
        raise TemplateError("the url's scheme, user, host and port cannot be templates")
    rest = template[origin.end() :]
    parts: list[str] = []
    component = "path"
    pos = 0
    for m in _WHOLE.finditer(rest):
        literal = rest[pos : m.start()]
        parts.append(quote(literal, safe=_URL_LITERAL_SAFE))
        if "#" in literal:
            component = "fragment"
        elif "?" in literal and component == "path":
            component = "query"
        encoded = quote(_text(_value(scopes, m)), safe="")
        parts.append(encoded.replace(".", "%2E") if component == "path" else encoded)
        pos = m.end()
    parts.append(quote(rest[pos:], safe=_URL_LITERAL_SAFE))
    # encoded=True: sent exactly as built (yarl would otherwise decode %2E and resolve `..`)
    return URL(str(URL(origin.group())) + "".join(parts), encoded=True)


def _render_text_body(name: str, text: str, media: str, scopes: Mapping[str, Mapping[str, Any]]) -> str:
    """A string body: values form-encoded for a form, as they are for plain text; any other
    text (JSON, XML) would let a value rewrite its structure, so it takes no templates."""
    if not _WHOLE.search(text):
        return text
    if media == FORM:
        return _WHOLE.sub(lambda m: quote_plus(_text(_value(scopes, m)), safe=""), text)
    if media in TEXT_BODY_MEDIA:
        return _WHOLE.sub(lambda m: _text(_value(scopes, m)), text)
    raise _ToolFailedError(f"tool {name}: {TEXT_BODY_TEMPLATES}")


def _builtin_specs(state: CallState) -> dict[str, ToolSpec]:
    declared = state.declared
    listing = "; ".join(
        f"{n} ({s.type}{': ' + ', '.join(s.values) if s.values else ''})"
        + (f" - {s.description}" if s.description else "")
        for n, s in declared.items()
    )
    name_schema: dict[str, Any] = {"type": "string"}
    if declared:
        name_schema["enum"] = list(declared)
    return {
        "end_call": ToolSpec(
            "end_call",
            "End the call. Say goodbye first: the call ends as soon as this returns.",
            {"type": "object", "properties": {}, "additionalProperties": False},
        ),
        "transfer_call": ToolSpec(
            "transfer_call",
            "Transfer the caller to another phone number; this agent's part of the call ends.",
            {
                "type": "object",
                "properties": {
                    "phone_number": {
                        "type": "string",
                        "pattern": E164_PATTERN,
                        "description": "E.164 format, e.g. +14155550123",
                    }
                },
                "required": ["phone_number"],
                "additionalProperties": False,
            },
        ),
        "set_variable": ToolSpec(
            "set_variable",
            "Remember a value for the rest of the call. Variables: " + (listing or "none declared") + ".",
            {
                "type": "object",
                "properties": {"name": name_schema, "value": {"type": ["string", "number", "boolean"]}},
                "required": ["name", "value"],
                "additionalProperties": False,
            },
        ),
    }


@functools.lru_cache(maxsize=1024)
def _validator(schema: str) -> Draft202012Validator:
    """A checked validator per parameters schema, shared by every call of the process: checking
    a schema costs more than a whole call's audio path."""
    parameters = json.loads(schema)
    Draft202012Validator.check_schema(parameters)
    return Draft202012Validator(parameters)


class ToolBox:
    """The tools one agent may call (workflow-defined and built-in) during one call.

    `canned` results (scripted workflow tests) replace running a workflow-defined tool; an http
    tool's `save` still applies to a canned result, as it stands in for the response. Built-ins
    always run: they only touch the call itself.
    """

    def __init__(
        self,
        workflow: Workflow,
        agent_tools: Iterable[str],
        state: CallState,
        *,
        http: aiohttp.ClientSession,
        canned: Mapping[str, object] | None = None,
        transfer: Transfer | None = None,
    ) -> None:
        self._state = state
        self._http = http
        self._canned = dict(canned or {})
        self._transfer = transfer
        self._defined: dict[str, ToolDef] = {}
        self._specs: dict[str, ToolSpec] = {}
        self._functions: dict[str, Callable[..., object]] = {}
        builtins = _builtin_specs(state)
        for name in agent_tools:
            if name in self._specs:
                continue
            if name in workflow.tools:
                tool = workflow.tools[name]
                self._defined[name] = tool
                self._specs[name] = ToolSpec(name, tool.description, tool.parameters)
            elif name in BUILTIN_TOOLS:
                self._specs[name] = builtins[name]
            else:
                raise ToolError(
                    f"tool {name!r} is neither defined in workflow {workflow.slug!r} nor built in "
                    f"(built-ins: {', '.join(BUILTIN_TOOLS)})"
                )
        self._validators: dict[str, Draft202012Validator] = {}
        for name, spec in self._specs.items():
            try:
                self._validators[name] = _validator(json.dumps(spec.parameters, sort_keys=True))
            except SchemaError as exc:
                raise ToolError(
                    f"tool {name!r}: parameters is not a valid JSON Schema: {exc.message}"
                ) from exc

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def specs(self) -> list[ToolSpec]:
        return list(self._specs.values())

    def filler_for(self, name: str) -> str | None:
        """The line to say while the tool runs, rendered with the call's data; None if it has none."""
        tool = self._defined.get(name)
        if tool is None or tool.filler is None:
            return None
        try:
            return render(tool.filler, user=self._state.user, vars=self._state.vars)
        except TemplateError as exc:
            log.warning("tool_filler_failed", tool=name, error=str(exc))
            return None

    async def run(self, call: ToolCall) -> ToolOutcome:
        """Run one tool call (a pipeline ToolRunner); a failure is an error result, never raised."""
        started = time.perf_counter()
        canned = call.name in self._canned and call.name in self._defined
        try:
            outcome = self._json_result(call.name, await self._run(call))
        except _ToolFailedError as exc:
            log.warning(
                "tool_failed",
                tool=call.name,
                error=str(exc),
                exc_info=exc.__cause__ if exc.traceback else None,
                **({"tool_traceback": exc.child_traceback} if exc.child_traceback else {}),
            )
            return ToolOutcome({"error": str(exc)}, is_error=True)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        log.info(
            "tool_called", tool=call.name, duration_ms=duration_ms, **({"canned": True} if canned else {})
        )
        return outcome

    def _json_result(self, name: str, outcome: ToolOutcome) -> ToolOutcome:
        """The outcome with a result the LLM, the transcript and the report can carry: JSON data
        (whatever a Python tool or a canned YAML value holds), cut to the tool's size limit."""
        tool = self._defined.get(name)
        limit = tool.http.max_response_bytes if tool is not None and tool.http else MAX_RESULT_BYTES
        result, size = capped(json_safe(outcome.result, max_chars=limit), limit)
        if size is not None:
            log.warning("tool_result_truncated", tool=name, size_bytes=size, limit_bytes=limit)
        return dataclasses.replace(outcome, result=result)

    async def _run(self, call: ToolCall) -> ToolOutcome:
        name = call.name
        if name not in self._specs:
            available = ", ".join(self._specs) or "none"
            raise _ToolFailedError(f"tool {name!r} is not available to this agent (its tools: {available})")
        args = dict(call.arguments)
        errors = sorted(
            self._validators[name].iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path]
        )
        if errors:
            shown = "; ".join(f"{_path(e)}: {e.message}" for e in errors[:_MAX_SCHEMA_ERRORS])
            more = (
                f" (and {len(errors) - _MAX_SCHEMA_ERRORS} more)" if len(errors) > _MAX_SCHEMA_ERRORS else ""
            )
            raise _ToolFailedError(f"tool {name}: invalid arguments: {shown}{more}")
        tool = self._defined.get(name)
        if tool is None:
            return await self._builtin(name, args)
        if name in self._canned:
            result = self._canned[name]
            if tool.http is not None:
                self._save(name, tool.http, result)
            return ToolOutcome(result)
        if tool.http is not None:
            return ToolOutcome(await self._call_http(name, tool, args))
        assert tool.python is not None  # ToolDef guarantees exactly one implementation
        timeout_s = tool.timeout_s if tool.timeout_s is not None else PYTHON_TIMEOUT_S
        return ToolOutcome(await self._call_python(name, tool.python, args, timeout_s))

    async def _builtin(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        if name == "end_call":
            return ToolOutcome({"ok": True}, end_call=True)
        if name == "set_variable":
            try:
                self._state.set(args["name"], args["value"])
            except VariableError as exc:
                raise _ToolFailedError(f"tool set_variable: {exc}") from exc
            return ToolOutcome({"ok": True, "name": args["name"], "value": args["value"]})
        if name == "transfer_call":
            number = args["phone_number"]
            if self._transfer is None:
                raise _ToolFailedError(NO_TELEPHONY)
            try:
                await self._transfer(number)
            except Exception as exc:
                # The transport's failure (SIP refused, room gone) is reported to the LLM like
                # any tool failure, so the agent can tell the caller instead of going silent.
                raise _ToolFailedError(
                    f"tool transfer_call: {type(exc).__name__}: {exc}", traceback=True
                ) from exc
            return ToolOutcome({"ok": True, "transferred_to": number}, end_call=True)
        raise AssertionError(f"unhandled built-in tool {name!r}")

    def _scopes(self, tool: ToolDef, args: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        # Declared but omitted (optional) arguments render as empty; undeclared names are errors.
        declared = tool.parameters.get("properties", {})
        defaults = dict.fromkeys(declared) if isinstance(declared, Mapping) else {}
        return {"user": self._state.user, "vars": self._state.vars, "args": {**defaults, **args}}

    def _render_body(self, value: object, scopes: dict[str, Mapping[str, Any]]) -> object:
        if isinstance(value, str):
            text = render(value, user=scopes["user"], vars=scopes["vars"], args=scopes["args"])
            whole = _WHOLE.fullmatch(value)
            # A string that is one placeholder keeps the value's JSON type (a number stays a number).
            return scopes[whole.group(1)][whole.group(2)] if whole else text
        if isinstance(value, Mapping):
            return {k: self._render_body(v, scopes) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._render_body(v, scopes) for v in value]
        return value

    async def _call_http(self, name: str, tool: ToolDef, args: Mapping[str, Any]) -> object:
        spec = tool.http
        assert spec is not None
        scopes = self._scopes(tool, args)
        try:
            url = _render_url(spec.url, scopes)
            headers = {
                k: render(v, user=scopes["user"], vars=scopes["vars"], args=scopes["args"])
                for k, v in spec.headers.items()
            }
            send: dict[str, Any] = {}
            if isinstance(spec.body, str):
                send["data"] = _render_text_body(name, spec.body, spec.media_type(), scopes).encode()
            elif spec.body is not None:
                send["json"] = self._render_body(spec.body, scopes)
        except TemplateError as exc:
            raise _ToolFailedError(f"tool {name}: {exc}") from exc
        except ValueError as exc:  # a url yarl cannot read
            raise _ToolFailedError(f"tool {name}: invalid url: {exc}") from exc
        for header, value in headers.items():
            if _HEADER_BREAKS.search(value):
                # a value with a line break would add headers of the caller's choosing
                raise _ToolFailedError(
                    f"tool {name}: header {header!r} would contain a line break from a template value; "
                    "not sent"
                )
        try:
            async with asyncio.timeout(spec.timeout_s):
                async with self._http.request(spec.method, url, headers=headers, **send) as resp:
                    status = resp.status
                    raw = await _read_capped(name, resp, spec.max_response_bytes)
        except TimeoutError as exc:
            raise _ToolFailedError(f"tool {name}: no response within {spec.timeout_s:g} s") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            # ValueError: a rendered URL or header aiohttp refuses (InvalidURL is both kinds).
            raise _ToolFailedError(f"tool {name}: request failed: {type(exc).__name__}: {exc}") from exc
        if status >= 400:
            excerpt = _excerpt(raw)
            raise _ToolFailedError(f"tool {name}: HTTP {status}" + (f": {excerpt}" if excerpt else ""))
        if not raw.strip():
            result: object = {"ok": True, "status": status}
        else:
            try:
                result = json.loads(raw)
            except ValueError as exc:
                raise _ToolFailedError(f"tool {name}: response is not JSON: {_excerpt(raw)}") from exc
        self._save(name, spec, result)
        return result

    def _save(self, name: str, spec: HttpSpec, result: object) -> None:
        values: dict[str, object] = {}
        for var, dotted in spec.save.items():
            found, value = _lookup(result, dotted)
            if not found:
                raise _ToolFailedError(f"tool {name}: response has no {dotted!r} (to save as vars.{var})")
            values[var] = value
        try:
            self._state.update(values)
        except VariableError as exc:
            raise _ToolFailedError(f"tool {name}: cannot save the response: {exc}") from exc

    async def _call_python(self, name: str, target: str, args: Mapping[str, Any], timeout_s: float) -> object:
        fn = self._functions.get(target)
        if fn is None:
            try:
                # Importing runs the module's top-level code, which may block: keep it off the loop.
                fn = await asyncio.to_thread(resolve, target)
            except ToolError as exc:
                raise _ToolFailedError(f"tool {name}: {exc}") from exc
            # a module's top level may even call sys.exit(): that must not end the process
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                raise _ToolFailedError(
                    f"tool {name}: cannot import {target!r}: {type(exc).__name__}: {exc}", traceback=True
                ) from exc
            self._functions[target] = fn
        if not inspect.iscoroutinefunction(fn):
            return await self._call_in_process(name, target, args, timeout_s)
        try:
            # an async tool runs on the event loop, where cancelling it at the timeout stops it
            async with asyncio.timeout(timeout_s):
                return await fn(**args)
        except TimeoutError as exc:
            log.warning("tool_timed_out", tool=name, timeout_s=timeout_s, runs_in="event_loop")
            raise _ToolFailedError(f"tool {name}: no result within {timeout_s:g} s") from exc
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # The tool's own code: whatever it raises (even SystemExit, which would end a worker
            # serving many calls) becomes an error result for the LLM. CancelledError passes.
            raise _ToolFailedError(f"tool {name}: {type(exc).__name__}: {exc}", traceback=True) from exc

    async def _call_in_process(
        self, name: str, target: str, args: Mapping[str, Any], timeout_s: float
    ) -> object:
        try:
            future = await run_in_process(target, args, timeout_s, MAX_RESULT_BYTES)
        except Exception as exc:  # the pool could not start: no process, no forkserver
            raise _ToolFailedError(
                f"tool {name}: cannot start a process for python tools: {type(exc).__name__}: {exc}",
                traceback=True,
            ) from exc
        try:
            # pebble times the run and kills the worker; this also bounds the wait for a free one
            async with asyncio.timeout(timeout_s):
                child = await asyncio.wrap_future(future)
        except TimeoutError as exc:
            log.warning("tool_timed_out", tool=name, timeout_s=timeout_s, runs_in="process")
            raise _ToolFailedError(f"tool {name}: no result within {timeout_s:g} s") from exc
        except ProcessExpired as exc:
            raise _ToolFailedError(f"tool {name}: its process died (exit code {exc.exitcode})") from exc
        except Exception as exc:  # what pebble raises for a task it could not send or receive
            raise _ToolFailedError(f"tool {name}: {type(exc).__name__}: {exc}", traceback=True) from exc
        if child.error is not None:
            raise _ToolFailedError(f"tool {name}: {child.error}", child_traceback=child.traceback)
        return child.result
