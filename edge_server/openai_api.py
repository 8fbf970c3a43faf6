"""OpenAI-compatible HTTP API: `POST /v1/audio/transcriptions`, `GET /v1/models[/{id}]`.

Any OpenAI client works by pointing its base URL at `http://BOX:8765/v1` and using the
server token as the API key (`Authorization: Bearer TOKEN`; loopback clients need none
by default). `model` picks one of the served models (`GET /v1/models` lists them); absent
or `whisper-1` (many tools hard-code it) means the server's default model; any other id is
refused with 400 `model_not_found`, whose message lists the served ids.

An upload, in order:
1. authorization, readiness (503 while starting or draining) and a clip slot (429 when
   `max_clip_jobs` uploads and Wyoming utterances are running) are checked from the
   headers alone, before the body is read; a client that sends `Expect: 100-continue`
   (curl does for bodies over 1 MB) is refused before it sends the body at all;
2. the body is streamed to a temporary file with a size limit (`max_upload_mb`, 413);
3. the file is decoded in a child process (`edge_server.upload_decoder`: a format
   allowlist detected from the content, 400 `unsupported_format`; a crash or a hang fails
   only this request, 400 `invalid_file` / `decode_timeout`), block by block, at most
   `max_upload_audio_s` of audio (413 `audio_too_long`);
4. the blocks are segmented and transcribed through the same scheduler and workers as
   live streams (`EdgeServer.clips`), read no faster than the workers transcribe them, so
   memory per upload is bounded whatever the audio's length.
`prompt` and `temperature` are accepted and ignored (Moonshine takes no prompt and
decodes greedily). Word timestamps are refused: the engine has no token times.
Errors use OpenAI's body shape (see `openai_format.error_body`); the status codes are
documented in docs/lan-server.md. Handlers run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

from aiohttp import web

from edge_server.audio import AudioError
from edge_server.clips import ClipError, ClipsBusy, ClipSlot
from edge_server.openai_format import RESPONSE_FORMATS, error_body, render_response
from edge_server.upload_decoder import (
    AudioTooLong,
    DecodeLimits,
    DecoderFailed,
    DecoderUnavailable,
    DecoderZygote,
    UnsupportedFormat,
    UploadDecoder,
)
from edge_server.uploads import CHUNK, UploadError, UploadStalled, UploadTooLarge, read_form

if TYPE_CHECKING:
    from edge_server.app import EdgeServer
    from edge_server.lan.client_address import ClientAddress

log = logging.getLogger(__name__)
MODEL_ALIASES = ("whisper-1",)
LANGUAGES = ("en",)
GRANULARITIES = ("segment", "word")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_, param, code)
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return web.json_response(self.body, status=self.status, headers=headers)


def add_openai_routes(app: web.Application, server: EdgeServer) -> None:
    api = OpenAiApi(server)
    app.router.add_post("/v1/audio/transcriptions", api.transcriptions,
                        expect_handler=api.expect_continue)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/models/{model}", api.model)
    app.on_cleanup.append(api.close)


class OpenAiApi:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.zygote = DecoderZygote()  # forks the upload decoders; started when first needed

    async def close(self, app: web.Application | None = None) -> None:
        await self.zygote.close()

    # ---- helpers -------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The default model (what `whisper-1` or no `model` mean)."""
        return self.server.model_id

    def _model_entry(self, model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": int(self.server.started_wall),
                "owned_by": "earshot"}

    def _served(self, name: str | None) -> str:
        """The served model a request names (None, "" or an alias: the default)."""
        if not name or name in MODEL_ALIASES:
            return self.model_id
        if name not in self.server.models:
            raise ApiError(400, f"the model '{name[:64]}' is not served here (served: "
                           f"{', '.join(self.server.models)}; 'whisper-1' means "
                           f"{self.model_id})", param="model", code="model_not_found")
        return name

    def _client(self, request: web.Request) -> ClientAddress:
        """The client (behind a trusted proxy: the one it names) for auth, lockout and logs."""
        return self.server.auth.client(request.remote, request.headers)

    def _authorize(self, request: web.Request, client: ClientAddress | None = None) -> None:
        client = client or self._client(request)
        header = request.headers.get("Authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        decision = self.server.auth.check(client.address, presented, verified=client.verified)
        if decision.locked_out:
            raise ApiError(429, decision.reason, "rate_limit_error", code="rate_limit_exceeded",
                           retry_after=decision.retry_after)
        if not decision.allowed:
            self.server.stats["auth_failures"] += 1
            raise ApiError(401, f"{decision.reason}: send the server token as the API key "
                           "(`earshot-server token` shows it)", "invalid_request_error",
                           code="invalid_api_key")

    def _check_ready(self) -> None:
        retry = self.server.settings.retry_after_s
        if self.server.draining:
            raise ApiError(503, "the server is shutting down", "server_error",
                           code="unavailable", retry_after=retry)
        if not self.server.pool.serving:  # a restarting worker: the upload waits instead
            raise ApiError(503, "the server is starting (models loading)" if not
                           self.server.pool.failed else "the speech engine failed to load",
                           "server_error", code="unavailable", retry_after=retry)

    def _reserve_clip(self) -> ClipSlot:
        try:
            return self.server.clips.reserve()
        except ClipsBusy as exc:
            raise ApiError(429, f"the server is busy: {exc}; retry later", "rate_limit_error",
                           code="rate_limit_exceeded",
                           retry_after=self.server.settings.retry_after_s) from None

    def _refused(self, client: ClientAddress, exc: ApiError) -> web.Response:
        self.server.stats["api_errors"] += 1
        log.info("transcription request from %s refused: %s", client,
                 exc.body["error"]["message"])
        return exc.response()

    # ---- routes --------------------------------------------------------------------------
    async def expect_continue(self, request: web.Request) -> web.Response | None:
        """`Expect: 100-continue`: refuse from the headers alone, else invite the body.

        A refusal closes the connection, so the client never sends the body. Admission is
        checked again (and a slot taken) once the body comes.
        """
        client = self._client(request)
        try:
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise ApiError(417, f"unknown Expect: {request.headers.get('Expect')}")
            self._authorize(request, client)
            self._check_ready()
            self._reserve_clip().release()
            limit = int(self.server.settings.max_upload_mb * 1_000_000)
            if request.content_length is not None and request.content_length > limit + CHUNK:
                raise ApiError(413, str(UploadTooLarge(limit)), param="file",
                               code="file_too_large")
        except ApiError as exc:
            self.server.stats["api_requests"] += 1
            response = self._refused(client, exc)
            response.force_close()
            return response
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except ApiError as exc:
            return exc.response()
        return web.json_response({"object": "list",
                                  "data": [self._model_entry(m) for m in self.server.models]})

    async def model(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
            name = request.match_info["model"]
            if name not in (*self.server.models, *MODEL_ALIASES):
                raise ApiError(404, f"the model '{name[:64]}' does not exist on this server "
                               f"(served: {', '.join(self.server.models)})",
                               param="model", code="model_not_found")
        except ApiError as exc:
            return exc.response()
        return web.json_response(self._model_entry(self._served(name)))

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        self.server.stats["api_requests"] += 1
        form = None
        client = self._client(request)
        try:
            self._authorize(request, client)
            self._check_ready()
            with self._reserve_clip() as slot:  # before a byte of the body is read
                settings = self.server.settings
                limit = int(settings.max_upload_mb * 1_000_000)
                try:
                    form = await read_form(request, "file", limit,
                                           idle_timeout_s=settings.upload_idle_timeout_s)
                except UploadTooLarge as exc:
                    raise ApiError(413, str(exc), param="file", code="file_too_large") from None
                except UploadStalled as exc:
                    raise ApiError(408, str(exc), param="file", code="upload_timeout") from None
                except UploadError as exc:
                    raise ApiError(400, str(exc), param=exc.param) from None
                options = self._options(form)
                transcript = await self._transcribe(request, form, slot, options["model"])
        except ApiError as exc:
            return self._refused(client, exc)
        finally:
            if form is not None:
                form.discard()
        content_type, body = render_response(transcript, options["response_format"],
                                             options["language"])
        log.info("transcribed %.1f s of audio for %s in %.2f s", transcript.duration,
                 client, time.monotonic() - started)
        if isinstance(body, dict):
            return web.json_response(body)
        return web.Response(text=body, content_type=content_type, charset="utf-8")

    def _options(self, form) -> dict:
        if form.file_path is None:
            raise ApiError(400, "you must provide a 'file' (multipart form field)", param="file")
        model = self._served(form.get("model"))
        fmt = form.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                           param="response_format")
        language = (form.get("language") or "en").lower()
        if language not in LANGUAGES:
            raise ApiError(400, f"language '{language}' is not supported by {model} "
                           f"(supported: {', '.join(LANGUAGES)})", param="language",
                           code="unsupported_language")
        grains = form.fields.get("timestamp_granularities[]", []) + form.fields.get(
            "timestamp_granularities", [])
        for grain in grains:
            if grain not in GRANULARITIES:
                raise ApiError(400, f"timestamp_granularities: unknown value '{grain}'",
                               param="timestamp_granularities")
            if grain == "word":
                raise ApiError(400, "word timestamps are not available: the engine does not "
                               "produce token times (segment timestamps are)",
                               param="timestamp_granularities")
        if grains and fmt != "verbose_json":
            raise ApiError(400, "timestamp_granularities needs response_format=verbose_json",
                           param="timestamp_granularities")
        if (form.get("stream") or "false").lower() == "true":
            raise ApiError(400, "streaming responses are not supported for this model; use "
                           "the WebSocket stream for live text", param="stream")
        return {"response_format": fmt, "language": language, "model": model}

    def _limits(self) -> DecodeLimits:
        settings = self.server.settings
        return DecodeLimits(max_audio_s=settings.max_upload_audio_s,
                            timeout_s=settings.upload_decode_timeout_s)

    async def _decode_and_transcribe(self, form, slot: ClipSlot, model: str):
        async with UploadDecoder(form.file_path, self._limits(), self.zygote) as decoder:
            log.debug("upload %s: %s (%s), %s s", form.file_name, decoder.info.get("format"),
                      decoder.info.get("codec"), decoder.info.get("duration"))
            return await self.server.clips.transcribe(decoder, source=form.file_name or "",
                                                      slot=slot, model=model)

    async def _transcribe(self, request: web.Request, form, slot: ClipSlot, model: str):
        """Decode and transcribe the saved upload; abandoned when the client disconnects."""
        job = asyncio.get_running_loop().create_task(
            self._decode_and_transcribe(form, slot, model))
        try:
            while not job.done():
                await asyncio.wait({job}, timeout=0.5)
                transport = request.transport
                if not job.done() and (transport is None or transport.is_closing()):
                    job.cancel()
                    self.server.stats["api_abandoned"] += 1
            return job.result()
        except AudioTooLong as exc:
            raise ApiError(413, str(exc), param="file", code="audio_too_long") from None
        except UnsupportedFormat as exc:
            raise ApiError(400, str(exc), param="file", code="unsupported_format") from None
        except DecoderFailed as exc:
            self.server.stats["api_decoder_failures"] += 1
            raise ApiError(400, str(exc), param="file",
                           code="decode_timeout" if exc.timed_out else "invalid_file") from None
        except AudioError as exc:
            raise ApiError(400, f"could not decode the audio file: {exc}", param="file",
                           code="invalid_file") from None
        except DecoderUnavailable as exc:
            raise ApiError(503, str(exc), "server_error", code="unavailable",
                           retry_after=self.server.settings.retry_after_s) from None
        except ClipError as exc:
            raise ApiError(500, f"decoding failed: {exc}", "server_error") from None
        finally:
            if not job.done():
                job.cancel()
            with contextlib.suppress(BaseException):
                await job
