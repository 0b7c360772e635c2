"""The web page for chemists (``/``), the API docs (``/docs``: Swagger UI, ``/redoc``: ReDoc) and their static files
(``/static``), all public (no API key: the page asks for the key and sends it to ``/v1``, which keeps requiring it).

Nothing here makes the browser leave the server: the page is plain HTML, CSS and JavaScript modules
(``lieprop/service/static``), and Swagger UI, ReDoc and 3Dmol.js are vendored from npm at pinned versions under
``static/vendor/<package>-<version>/`` with their licenses (``static/vendor/README.md`` says where each came from).
Every asset is referenced by a relative URL, so the pages also work behind a path prefix. The HTML pages carry a
Content-Security-Policy that allows only this origin (plus ``data:``/``blob:`` images and workers): a request to
another host, such as ReDoc's footer logo, is blocked by the browser before it is sent.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

#: The page, its script and style, the favicon and the vendored packages.
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VENDOR = "static/vendor"
SWAGGER_UI = f"{VENDOR}/swagger-ui-dist-5.35.0"
REDOC = f"{VENDOR}/redoc-2.5.4"
FAVICON = "static/favicon.svg"

#: Only this origin; inline scripts and styles for the docs pages (FastAPI's Swagger UI start-up script, ReDoc's
#: styled components), data:/blob: images and workers (ReDoc's search runs in a blob worker).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
)
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)

#: The static files, mounted by :func:`lieprop.service.app.create_app` (a mount is not part of a router in every
#: FastAPI version this package supports). Public: a mount carries no API-key declaration.
STATIC = Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static")


def _secured(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
async def index() -> Response:
    """The web page: paste or upload molecules, pick properties, see values with units and a 3D view."""
    return _secured(FileResponse(STATIC_DIR / "index.html", media_type="text/html"))


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui() -> Response:
    """Swagger UI from the vendored swagger-ui-dist (the relative URLs resolve against ``/docs``)."""
    return _secured(get_swagger_ui_html(
        openapi_url="openapi.json", title="lieprop API", swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css", swagger_favicon_url=FAVICON,
        swagger_ui_parameters={"validatorUrl": None}))  # the validator badge would call validator.swagger.io


@router.get("/redoc", response_class=HTMLResponse)
async def redoc() -> Response:
    """ReDoc from the vendored redoc bundle, without Google fonts."""
    return _secured(get_redoc_html(openapi_url="openapi.json", title="lieprop API", with_google_fonts=False,
                                   redoc_js_url=f"{REDOC}/redoc.standalone.js", redoc_favicon_url=FAVICON))
