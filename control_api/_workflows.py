"""/api/v1/workflows: the registry, so clients discover slugs and the variables each takes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from workflows import UnknownWorkflowError, Workflow, WorkflowRegistry

from ._errors import ApiError
from ._models import WorkflowInfo, WorkflowList
from ._openapi import ApiRoute


def _variables(workflow: Workflow) -> dict[str, Any]:
    return {
        name: {
            "type": spec.type,
            "required": spec.required,
            "default": spec.default,
            **({"values": list(spec.values)} if spec.values else {}),
            **({"description": spec.description} if spec.description else {}),
        }
        for name, spec in workflow.variables.items()
    }


def describe(workflow: Workflow) -> dict[str, Any]:
    return {
        "slug": workflow.slug,
        "name": workflow.name or workflow.slug,
        "description": workflow.description,
        "start": workflow.start,
        "agents": list(workflow.agents),
        "variables": _variables(workflow),
    }


class WorkflowRoutes:
    def __init__(self, registry: WorkflowRegistry) -> None:
        self.registry = registry

    def routes(self) -> list[ApiRoute]:
        return [
            ApiRoute("GET", "/api/v1/workflows", self.list, "The workflows calls can use", WorkflowList,
                     errors=(401, 429), tags=("workflows",)),
            ApiRoute("GET", "/api/v1/workflows/{slug}", self.get, "A workflow and its variables", WorkflowInfo,
                     errors=(401, 404, 429), tags=("workflows",)),
        ]  # fmt: skip

    async def list(self, _: web.Request) -> web.Response:
        listing = WorkflowList(
            items=[WorkflowInfo.model_validate(describe(w)) for w in self.registry.workflows()]
        )
        return web.json_response(listing.model_dump(mode="json"))

    async def get(self, request: web.Request) -> web.Response:
        try:
            workflow = self.registry.get(request.match_info["slug"])
        except UnknownWorkflowError:
            raise ApiError(404, "no such workflow") from None
        return web.json_response(WorkflowInfo.model_validate(describe(workflow)).model_dump(mode="json"))
