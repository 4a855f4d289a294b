"""The cluster's routes (`serve --node-id`, server/cluster.py): the nodes sharing the store, and
moving stations between them. A server running alone answers 400 to each."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from edrvctl.errors import UsageError
from edrvctl.fleet import Fleet
from edrvctl.server.api import envelope

log = logging.getLogger("edrvctl.api")

NodeId = Annotated[str, Path(max_length=40, description="the node's --node-id")]


class Rebalance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    max: float = Field(
        default=30.0, gt=0, le=100, description="the most a node sheds, in % of its stations"
    )


def add_routes(app: FastAPI, fleet: Fleet, auth: list[Any]) -> None:
    def cluster() -> Any:
        if fleet.router is None:
            raise UsageError(
                "this server runs alone: there are no nodes",
                hint="several nodes share one PostgreSQL store: `serve --node-id`",
            )
        return fleet.router

    def admin(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    @app.get("/v1.1/nodes", dependencies=auth, summary="The nodes sharing this store")
    async def list_nodes() -> Response:
        found = await cluster().nodes()
        return envelope(found, f"{len(found)} node(s)")

    @app.post(
        "/v1.1/nodes/{id}/drain",
        dependencies=auth,
        status_code=202,
        summary="Move every station off a node, at a bounded rate; it takes no new ones",
    )
    async def drain(request: Request, id: NodeId) -> Response:
        node = await cluster().drain(id)
        log.info("admin %s: node %s drained (%d stations)", admin(request), id, node["moving"])
        return envelope(node, f"node {id} is draining {node['moving']} station(s)", 202)

    @app.post(
        "/v1.1/nodes/rebalance",
        dependencies=auth,
        status_code=202,
        summary="Move stations from the busiest nodes to the others, at most `max`% of each",
    )
    async def rebalance(request: Request, body: Rebalance | None = None) -> Response:
        share = (body or Rebalance()).max / 100
        moves = await cluster().rebalance(share)
        log.info("admin %s: rebalance, moving %s", admin(request), moves or "nothing")
        moving = sum(moves.values())
        return envelope({"moves": moves}, f"{moving} station(s) moving", 202)
