"""Streamed uploads: a request body written to disk as it arrives, never held in memory, at most a given size.

The edge (:mod:`lieprop.service.edge`) wraps the ASGI ``receive`` of a route marked as an upload
(:data:`lieprop.service.access.STREAMED_UPLOAD`) in :func:`limited_receive`; the route stores the body with
:func:`receive_upload` and answers :class:`UploadTooLarge` with 413.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from lieprop.service.errors import error_response

#: The name of the stored upload inside its folder.
UPLOAD_NAME = "upload"


class UploadTooLarge(Exception):
    """The upload went over its limit (``max_upload_bytes``) while it was being received."""


def limited_receive(receive: Callable, limit: int) -> Callable:
    """An ASGI ``receive`` that raises :class:`UploadTooLarge` once more than ``limit`` body bytes came in."""
    size = 0

    async def wrapped() -> dict:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise UploadTooLarge(f"the upload is larger than {limit} bytes")
        return message

    return wrapped


async def receive_upload(request: Request, folder: Path, values: dict[str, list[str]]
                         ) -> tuple[str | None, int] | Response:
    """Store the upload as ``folder/upload``: the ``file`` field of a multipart form, else the raw body.

    Returns (the uploaded file name, bytes), or an error response for a broken form. The form's text fields are
    added to ``values``. Raises :class:`UploadTooLarge` (from :func:`limited_receive`).
    """
    target = folder / UPLOAD_NAME
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        try:
            async with request.form(max_files=1, max_fields=16) as form:
                upload = form.get("file")
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        values.setdefault(key, []).append(value)
                if not isinstance(upload, UploadFile):
                    return error_response(422, "invalid_job", "the form has no file field named 'file'")
                size = await asyncio.to_thread(_copy, upload.file, target)
                return upload.filename, size
        except (MultiPartException, StarletteHTTPException) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
            return error_response(400, "invalid_upload", f"cannot read the multipart form: {message}")
        except (KeyError, ValueError, AssertionError) as exc:  # malformed headers the parser does not wrap
            return error_response(400, "invalid_upload", f"cannot read the multipart form: {exc}")
    size = 0
    with open(target, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            f.write(chunk)
    return None, size


def _copy(source: Any, target: Path) -> int:
    source.seek(0)
    with open(target, "wb") as f:
        shutil.copyfileobj(source, f, 1 << 20)
        return f.tell()
