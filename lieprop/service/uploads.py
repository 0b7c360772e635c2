"""Streamed uploads: a request body written to disk as it arrives, never held in memory, at most a given size.

The edge (:mod:`lieprop.service.edge`) wraps the ASGI ``receive`` of a route marked as an upload
(:data:`lieprop.service.access.STREAMED_UPLOAD`) in :func:`limited_receive`; the route stores the body with
:func:`receive_upload` and answers :class:`UploadTooLarge` with 413 and :class:`UploadTimeout` with 408.

An upload has a size limit (``max_upload_bytes``) and a minimum rate (``upload_min_rate_bytes_s``): after a grace of
``body_timeout_s`` it must have averaged at least that many bytes per second since its first byte was awaited, so a
client trickling a body (or sending none) cannot hold a connection and a job folder for ever. The check needs no
timer: each wait for the next piece of the body is bounded by the moment the average would drop below the rate.
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


class UploadTimeout(Exception):
    """The upload came slower than its minimum rate (``upload_min_rate_bytes_s``)."""


def limited_receive(receive: Callable, limit: int, min_rate: float = 0.0, grace_s: float = 0.0) -> Callable:
    """An ASGI ``receive`` that raises :class:`UploadTooLarge` once more than ``limit`` body bytes came in, and (with
    ``min_rate`` > 0) :class:`UploadTimeout` once the body, ``grace_s`` after the first call, has averaged fewer than
    ``min_rate`` bytes per second."""
    size = 0
    start: float | None = None

    async def wrapped() -> dict:
        nonlocal size, start
        if min_rate > 0:
            loop = asyncio.get_running_loop()
            start = loop.time() if start is None else start
            deadline = start + grace_s + size / min_rate  # when the average falls below min_rate
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
                raise UploadTimeout(f"the upload was too slow: {size:,} bytes in {loop.time() - start:.1f} s, under "
                                    f"{min_rate:g} bytes/s after the first {grace_s:g} s "
                                    "(upload_min_rate_bytes_s)") from None
        else:
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
