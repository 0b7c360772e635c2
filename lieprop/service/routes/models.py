"""``GET /v1/models`` and ``GET /v1/properties``: what the served model is and predicts."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from lieprop.service import schemas
from lieprop.service.access import API_KEY
from lieprop.service.errors import ERROR_RESPONSES
from lieprop.service.state import ServiceDep

router = APIRouter(prefix="/v1", dependencies=[API_KEY], tags=["models"], responses={401: ERROR_RESPONSES[401]})


@router.get("/models", response_model=schemas.ModelsResponse)
async def models(service: ServiceDep) -> Response:
    """The served models, the default first (``"default": true``): name, version, sha256, architecture, targets,
    properties with units and test MAE, training facts. A predict request chooses one by its name."""
    return JSONResponse({"models": [m.card for m in service.models.values()]})


@router.get("/properties", response_model=schemas.PropertiesResponse)
async def properties(service: ServiceDep) -> Response:
    """The properties the served model predicts, with units, descriptions and test MAE."""
    return JSONResponse({"model": service.info, "properties": service.cards["properties"]})
