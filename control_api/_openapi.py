"""The route table and the OpenAPI 3.1 document generated from it: every route names the models
that validate its body and shape its answer, so the document is the code's own description."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from ._models import Error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    response: Any
    """The answer's type (a model, or list[Model]); None: no body (a 204)."""
    body: Any = None
    status: int = 200
    accepted: bool = False
    """It may also answer 202 with the same body: asked for, done by a worker a moment later."""
    query: Sequence[Query] = ()
    errors: Sequence[int] = (400, 401, 404, 422, 429)
    public: bool = False
    """Served without an API key (health)."""
    media: str = "application/json"
    """The answer's media type; not JSON: a binary body (a recording)."""
    limit: str = "other"
    """Its rate limit class (control_api/_limits.py): dial, create, status, list, other."""
    tags: Sequence[str] = field(default_factory=tuple)

    def aiohttp(self) -> web.RouteDef:
        return web.route(self.method, self.path, self.handler)


def _schema(t: Any, components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = TypeAdapter(t).json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
    components.update(schema.pop("$defs", {}))
    if "title" in schema and schema.get("type") == "object" and "properties" in schema:
        name = schema["title"]
        components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}
    return schema


def openapi(routes: Sequence[ApiRoute], *, title: str, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    error = _schema(Error, components, "serialization")
    for route in routes:
        ok = (
            {"description": "No content"}
            if route.response is None  # a 204 has no body
            else {
                "description": "OK",
                "content": {
                    "application/json": {"schema": _schema(route.response, components, "serialization")}
                },
            }
        )
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {
                str(route.status): ok,
                **({"202": {**ok, "description": "Accepted: under way"}} if route.accepted else {}),
                **{
                    str(code): {"description": "error", "content": {"application/json": {"schema": error}}}
                    for code in route.errors
                    if not (route.public and code in (401, 429))
                },
            },
        }
        if route.tags:
            op["tags"] = list(route.tags)
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for p in _path_params(route.path)
        ] + [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "schema": q.schema,
                "description": q.description,
            }
            for q in route.query
        ]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(route.body, components, "validation")}},
            }
        if route.public:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "voicerun keys create"}
            },
        },
        "security": [{"apiKey": []}],
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
