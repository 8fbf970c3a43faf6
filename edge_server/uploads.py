"""Streaming multipart/form-data reader: the file part goes to disk, never into memory.

`read_form(request, file_field, max_bytes, folder)` walks the parts once: the part named
`file_field` is written to a temporary file in `folder` chunk by chunk, other parts are
read as short text fields (at most `MAX_FIELD_BYTES` each, repeated names collected in
order). A body larger than `max_bytes` raises `UploadTooLarge` as soon as the declared
Content-Length or the bytes received exceed it (the partial file is deleted); a body
that sends nothing for `idle_timeout_s` raises `UploadStalled` (a stalled client must
not hold an upload slot forever). The caller owns `Form.file_path` and must call
`Form.discard()`. Event loop; the disk writes are small and sequential.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import BodyPartReader, http_exceptions, web

CHUNK = 1 << 16
MAX_FIELD_BYTES = 8192
MAX_PARTS = 64


class UploadError(ValueError):
    """The form cannot be used (not multipart, malformed, a field too long)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UploadTooLarge(UploadError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than this server's limit of {limit} bytes "
                         f"({limit / 1e6:g} MB)", "file")
        self.limit = limit


class UploadStalled(UploadError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the upload stalled: nothing arrived for {seconds:g} s", "file")
        self.seconds = seconds


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file_path: Path | None = None
    file_name: str | None = None
    file_size: int = 0

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def discard(self) -> None:
        if self.file_path is not None:
            with contextlib.suppress(OSError):
                self.file_path.unlink()
            self.file_path = None


async def read_form(request: web.Request, file_field: str, max_bytes: int,
                    folder: str | None = None, idle_timeout_s: float = 60.0) -> Form:
    if request.content_length is not None and request.content_length > max_bytes + CHUNK:
        raise UploadTooLarge(max_bytes)
    if not request.content_type.startswith("multipart/form-data"):
        raise UploadError("the request must be multipart/form-data (fields 'file' and 'model')")
    form = Form()
    try:
        reader = await request.multipart()
        parts = 0
        while (part := await _idle(reader.next(), idle_timeout_s)) is not None:
            parts += 1
            if parts > MAX_PARTS:
                raise UploadError(f"more than {MAX_PARTS} form fields")
            if not isinstance(part, BodyPartReader) or not part.name:
                raise UploadError("a form part has no field name")
            if part.name == file_field and form.file_path is None:
                await _save_file(part, form, max_bytes, folder, idle_timeout_s)
            else:
                text = await _read_field(part, idle_timeout_s)
                form.fields.setdefault(part.name, []).append(text)
    except UploadError:
        form.discard()
        raise
    except (ValueError, AssertionError, http_exceptions.HttpProcessingError) as exc:  # malformed
        form.discard()
        raise UploadError(f"malformed multipart body: {exc}") from None
    except BaseException:
        form.discard()
        raise
    return form


async def _idle(awaitable, seconds: float):
    """`awaitable`'s result, or UploadStalled when it takes more than `seconds`."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise UploadStalled(seconds) from None


async def _save_file(part: BodyPartReader, form: Form, max_bytes: int,
                     folder: str | None, idle_timeout_s: float) -> None:
    fd, name = tempfile.mkstemp(prefix="earshot-upload-", dir=folder)
    form.file_path = Path(name)
    form.file_name = part.filename or "upload"
    with os.fdopen(fd, "wb") as out:
        while chunk := await _idle(part.read_chunk(CHUNK), idle_timeout_s):
            form.file_size += len(chunk)
            if form.file_size > max_bytes:
                raise UploadTooLarge(max_bytes)
            out.write(chunk)


async def _read_field(part: BodyPartReader, idle_timeout_s: float) -> str:
    data = bytearray()
    while chunk := await _idle(part.read_chunk(1024), idle_timeout_s):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise UploadError(f"form field '{part.name}' is longer than {MAX_FIELD_BYTES} bytes",
                              part.name)
    try:
        return data.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        raise UploadError(f"form field '{part.name}' is not valid text", part.name) from None
