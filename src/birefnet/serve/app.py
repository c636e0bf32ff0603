"""The HTTP API (FastAPI) and the web page.

Endpoints:

* ``POST /v1/remove-background``: one image in, one output out. The image comes as a
  ``multipart/form-data`` field ``file`` (options as form fields), or as the raw request body
  with an ``image/*`` or ``application/octet-stream`` content type (options as query
  parameters). The answer is the image itself (``response=image``, default: PNG unless
  ``format`` says otherwise) or JSON with the image in base64 (``response=json``).
* ``GET /v1/models``: the models this server has loaded (the first is the default).
* ``GET /healthz``: liveness and queue state.
* ``GET /``: the web page (``static/index.html``); ``/docs`` and ``/openapi.json``: the API docs.

Errors are JSON ``{"detail": "<what is wrong and what to do>", "error": "<code>"}`` with status
413 (upload or pixel count too large), 415 (not an image content type), 422 (unreadable image or
bad option), 404 (model not loaded here), 503 (queue full or shutting down; ``Retry-After``
header) or 504 (the request took longer than the time-out).

Nothing a request sends is used as a filesystem path: images come in the request, models are
picked by the names loaded at start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from birefnet import __version__
from birefnet.serve.batcher import BatcherStopped, MicroBatcher, QueueFull

if TYPE_CHECKING:  # pragma: no cover
    from birefnet.imageio import DecodedImage
    from birefnet.inference import Predictor

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ENDPOINT = "/v1/remove-background"
OUTPUT_KINDS = ("rgba", "mask", "composite")
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
# Request content types accepted as a raw image body (besides image/*).
RAW_TYPES = ("application/octet-stream",)
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers allowed on top of the image bytes


@dataclass
class ServeSettings:
    """Limits and batching of the server.

    Attributes:
        max_upload_bytes: largest accepted image upload (413 above it).
        max_pixels: largest accepted image, width x height (413 above it; checked from the
            header, before decoding).
        queue_size: most remove-background requests in progress at once (being received,
            decoded, waiting for or in the model, or being encoded); more get 503 with
            ``Retry-After``. This bounds memory under any load.
        max_batch: most requests run through the model as one batch (same model input size).
        batch_wait_ms: how long the model worker waits for more requests to fill a batch.
        request_timeout: seconds from the end of the upload to the answer (504 beyond).
        retry_after: seconds suggested to clients in the ``Retry-After`` header of a 503.
        cors_origins: origins allowed to call the API from other web pages (none by default).
        web_page: serve the web page at ``/``.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    queue_size: int = 16
    max_batch: int = 4
    batch_wait_ms: float = 5.0
    request_timeout: float = 60.0
    retry_after: int = 1
    cors_origins: Sequence[str] = field(default_factory=tuple)
    web_page: bool = True

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "queue_size", "max_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout}")


# --------------------------------------------------------------------------------------------
# Errors


class APIError(Exception):
    """An error answer: HTTP status, a short machine code and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": message, "error": code}, status_code=status, headers=headers)


def _validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "invalid option(s): " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Request options


class RemoveOptions(BaseModel):
    """Options of one remove-background request (form fields, or query parameters for raw bodies)."""

    model: str | None = Field(None, description="name of a loaded model (GET /v1/models); default: the first")
    output: Literal["rgba", "mask", "composite"] | None = Field(
        None,
        description="rgba: transparent cut-out; mask: 8-bit alpha mask; composite: opaque image over "
        "bg_color (default: composite if bg_color is given, else rgba)",
    )
    format: Literal["png", "webp", "jpg"] = Field(
        "png", description="image format (jpg only for mask/composite)"
    )
    quality: int | None = Field(None, ge=1, le=100, description="jpg/webp quality (default 95)")
    bg_color: str | None = Field(
        None, description="composite background: a name, #RRGGBB or r,g,b (default white)"
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="binarise the mask/alpha at this probability"
    )
    refine_foreground: bool = Field(False, description="estimate foreground colours at soft edges (no halo)")
    response: Literal["image", "json"] = Field(
        "image", description="image: the encoded image as the body; json: {..., 'image': base64}"
    )

    def resolved(self) -> tuple[str, tuple[int, int, int]]:
        """(output kind, background colour), applying the CLI's rules; APIError 422 on conflicts."""
        from birefnet.imageio import parse_color

        kind = self.output or ("composite" if self.bg_color is not None else "rgba")
        if self.bg_color is not None and kind != "composite":
            raise APIError(422, "invalid_option", f"bg_color only applies to output=composite, not {kind}")
        if self.format == "jpg" and kind == "rgba":
            raise APIError(
                422, "invalid_option", "jpg cannot store transparency: use format=png or webp for output=rgba"
            )
        background = (255, 255, 255)
        if self.bg_color is not None:
            try:
                background = parse_color(self.bg_color)
            except ValueError as e:
                raise APIError(422, "invalid_option", f"bg_color: {e}") from e
        return kind, background


# --------------------------------------------------------------------------------------------
# Upload guard: admission (bounded in-flight requests) and the upload size limit


class UploadGuard:
    """ASGI middleware for the upload endpoint: bounds concurrent requests and body bytes.

    Runs before FastAPI reads the body, so an over-limit request is refused without buffering it:
    a ``Content-Length`` above the limit gets 413 at once, a body that turns out longer (chunked
    uploads) fails with 413 while it is read, and requests beyond ``queue_size`` in progress get
    503 with ``Retry-After``.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ENDPOINT or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = self.state
        limit = state.settings.max_upload_bytes + MULTIPART_OVERHEAD
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _error_response(413, "too_large", _too_large_message(state.settings, int(length)))(
                scope, receive, send
            )
            return
        if state.in_flight >= state.settings.queue_size or state.stopping:
            state.rejected += 1
            message = (
                "the server is shutting down"
                if state.stopping
                else f"the server is busy ({state.in_flight} requests in progress); retry shortly"
            )
            await _error_response(
                503, "busy", message, headers={"Retry-After": str(state.settings.retry_after)}
            )(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, _too_large_message(state.settings, received))
            return message

        state.in_flight += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            state.in_flight -= 1


def _too_large_message(settings: ServeSettings, size: int) -> str:
    return (
        f"upload of {size:,} bytes is larger than the limit of {settings.max_upload_bytes:,} bytes; "
        "send a smaller image (or raise --max-upload-mb on the server)"
    )


# --------------------------------------------------------------------------------------------
# Models and state


@dataclass
class ServedModel:
    """A loaded model: its Predictor and the worker thread that runs it."""

    name: str
    predictor: Predictor
    batcher: MicroBatcher
    backend: str = "torch"

    def run_batch(self, payloads: list[Any]) -> list[Any]:
        """Worker-thread side: (B, h, w) probabilities for prepared images, or a tiled mask."""
        import torch

        if self.predictor.resolution == "tiled":
            return [self.predictor.predict_tiled(payloads[0])]
        probs = self.predictor.forward(torch.stack([p.tensor for p in payloads]))
        return list(probs)

    def info(self, default: bool) -> dict[str, Any]:
        p = self.predictor
        spec = getattr(p, "spec", None)
        cfg = getattr(p.model, "config", None)
        return {
            "name": self.name,
            "default": default,
            "backbone": getattr(cfg, "backbone", None) or (spec.backbone if spec is not None else None),
            "backend": self.backend,
            "device": str(p.device),
            "precision": p.precision,
            "resolution": p.resolution,
            "size": list(p.size),
            "license": spec.license if spec is not None else None,
            "commercial": spec.commercial if spec is not None else None,
            "description": spec.description if spec is not None else None,
        }


@dataclass
class ServerState:
    """Everything the handlers share (one instance per app, on ``app.state.birefnet``)."""

    settings: ServeSettings
    models: dict[str, ServedModel]
    in_flight: int = 0
    rejected: int = 0
    served: int = 0
    stopping: bool = False
    started_at: float = field(default_factory=time.time)

    @property
    def default(self) -> ServedModel:
        return next(iter(self.models.values()))

    def get(self, name: str | None) -> ServedModel:
        if name is None or name == "":
            return self.default
        found = self.models.get(name) or next(
            (m for m in self.models.values() if m.name.lower() == name.lower()), None
        )
        if found is None:
            raise APIError(
                404,
                "unknown_model",
                f"model {name!r} is not loaded on this server; loaded: {', '.join(self.models)} "
                "(GET /v1/models)",
            )
        return found


def _backend_of(predictor: Any) -> str:
    return str(getattr(predictor, "backend", None) or "torch")


def _build_models(
    models: Sequence[Any] | Mapping[str, Any] | None,
    settings: ServeSettings,
    predictor_options: Mapping[str, Any] | None,
) -> dict[str, ServedModel]:
    from birefnet.inference import Predictor

    if models is None:
        from birefnet.registry import DEFAULT_MODEL

        models = [DEFAULT_MODEL]
    items: list[tuple[str | None, Any]]
    if isinstance(models, Mapping):
        items = list(models.items())
    elif isinstance(models, (str, Predictor)):
        items = [(None, models)]
    else:
        items = [(None, m) for m in models]
    if not items:
        raise ValueError("no models given; pass at least one registry name, checkpoint or Predictor")
    served: dict[str, ServedModel] = {}
    for label, source in items:
        if isinstance(source, Predictor):
            predictor = source
        else:
            predictor = Predictor(source, **dict(predictor_options or {}))
        name = str(label or predictor.name)
        if name in served:
            raise ValueError(f"two models are named {name!r}; give them distinct names")
        batcher = MicroBatcher(
            lambda payloads, _n=name: served[_n].run_batch(payloads),
            max_batch=settings.max_batch,
            max_wait=settings.batch_wait_ms / 1000.0,
            capacity=settings.queue_size,
            name=f"birefnet-{name}",
        )
        served[name] = ServedModel(name, predictor, batcher, backend=_backend_of(predictor))
    return served


# --------------------------------------------------------------------------------------------
# The work of one request (decode and encode run on the thread pool)


def decode_upload(data: bytes, max_pixels: int) -> DecodedImage:
    """Bytes of an uploaded image -> DecodedImage; APIError 413/422 on failure."""
    from PIL import Image, UnidentifiedImageError

    from birefnet.imageio import ImageReadError, load_image

    if not data:
        raise APIError(422, "not_an_image", "the upload is empty; send the image bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise APIError(413, "too_many_pixels", f"image refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise APIError(
            422,
            "not_an_image",
            "the upload is not an image in a format this server can read (PNG, JPEG, WebP, BMP, TIFF, GIF...)",
        ) from e
    except Exception as e:  # truncated headers raise SyntaxError, struct.error, OSError...
        raise APIError(422, "not_an_image", f"unreadable image header ({type(e).__name__}: {e})") from e
    width, height = image.size
    if width * height > max_pixels:
        raise APIError(
            413,
            "too_many_pixels",
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it first",
        )
    try:
        image.load()
        return load_image(image, max_pixels=max_pixels)
    except ImageReadError as e:
        raise APIError(422, "not_an_image", f"unreadable image: {e.reason}") from e
    except Exception as e:  # truncated or corrupt data
        raise APIError(
            422,
            "not_an_image",
            f"truncated or corrupt {image.format or 'image'} data ({type(e).__name__}: {e})",
        ) from e


def encode_output(
    predictor: Predictor,
    image: DecodedImage,
    result: Any,
    kind: str,
    options: RemoveOptions,
    background: tuple[int, int, int],
) -> bytes:
    """Model result -> mask at the image's size -> requested output -> encoded bytes."""
    import numpy as np

    from birefnet.postprocess import render_outputs

    mask = result if isinstance(result, np.ndarray) else predictor.restore(result, image.size)
    out = render_outputs(
        image,
        mask,
        [kind],
        threshold=options.threshold,
        refine_foreground=options.refine_foreground,
        background=background,
    )[kind]
    buffer = io.BytesIO()
    params: dict[str, Any] = {}
    quality = options.quality or 95
    if options.format == "png":
        params["compress_level"] = 3
    elif options.format == "jpg":
        params.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        params.update(quality=quality, method=4)
    out.save(buffer, format=PIL_FORMATS[options.format], **params)
    return buffer.getvalue()


async def _run_sync(func: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args)


async def process(state: ServerState, data: bytes, options: RemoveOptions) -> Response:
    """Decode, queue for the model, encode; every failure is an APIError."""
    served = state.get(options.model)
    kind, background = options.resolved()
    predictor = served.predictor
    timings: dict[str, float] = {}
    start = time.perf_counter()

    async def work() -> tuple[DecodedImage, bytes]:
        image = await _run_sync(decode_upload, data, state.settings.max_pixels)
        if predictor.resolution == "tiled":
            payload, key = image, None
        else:
            payload = await _run_sync(predictor.prepare, image)
            key = payload.model_size
        timings["decode"] = time.perf_counter() - start
        try:
            future = served.batcher.submit(payload, key=key)
        except QueueFull as e:
            raise APIError(
                503, "busy", f"{e}; retry shortly", headers={"Retry-After": str(state.settings.retry_after)}
            ) from e
        except BatcherStopped as e:
            raise APIError(503, "shutting_down", str(e)) from e
        t = time.perf_counter()
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # the worker skips it if it has not started
            raise
        except BatcherStopped as e:
            raise APIError(503, "shutting_down", str(e)) from e
        except Exception as e:
            logger.exception("model failed on a request")
            raise APIError(
                500, "model_error", f"the model failed on this image ({type(e).__name__}: {e})"
            ) from e
        timings["model"] = time.perf_counter() - t
        t = time.perf_counter()
        encoded = await _run_sync(encode_output, predictor, image, result, kind, options, background)
        timings["encode"] = time.perf_counter() - t
        return image, encoded

    try:
        image, encoded = await asyncio.wait_for(work(), timeout=state.settings.request_timeout)
    except asyncio.TimeoutError as e:
        raise APIError(
            504,
            "timeout",
            f"the request took longer than {state.settings.request_timeout:g} s (queue + model); "
            "retry later or send a smaller image",
        ) from e
    state.served += 1
    total_ms = (time.perf_counter() - start) * 1000.0
    media_type = MEDIA_TYPES[options.format]
    headers = {
        "X-Model": served.name,
        "X-Image-Size": f"{image.width}x{image.height}",
        "X-Process-Time-Ms": f"{total_ms:.1f}",
    }
    if options.response == "json":
        body = {
            "model": served.name,
            "output": kind,
            "format": options.format,
            "media_type": media_type,
            "width": image.width,
            "height": image.height,
            "image": base64.b64encode(encoded).decode("ascii"),
            "timings_ms": {k: round(v * 1000.0, 2) for k, v in timings.items()}
            | {"total": round(total_ms, 2)},
        }
        return JSONResponse(body, headers=headers)
    return Response(encoded, media_type=media_type, headers=headers)


# --------------------------------------------------------------------------------------------
# The app


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_image_type(media: str) -> bool:
    return media.startswith("image/") or media in RAW_TYPES


_ERRORS_DOC: dict[int | str, dict[str, Any]] = {
    404: {"description": "the model is not loaded on this server"},
    413: {"description": "upload larger than the byte limit, or image larger than the pixel limit"},
    415: {"description": "the request or file part is not an image content type"},
    422: {"description": "unreadable image, or an invalid option"},
    503: {"description": "queue full or shutting down; see Retry-After"},
    504: {"description": "the request took longer than the server's time-out"},
}


def create_app(
    models: Sequence[Any] | Mapping[str, Any] | Any = None,
    *,
    settings: ServeSettings | None = None,
    predictor_options: Mapping[str, Any] | None = None,
) -> FastAPI:
    """Build the FastAPI app; the models are loaded here, once.

    Args:
        models: what to serve: a registry name, checkpoint path, hub id or
            :class:`~birefnet.inference.Predictor`; a list of those; or a mapping
            ``{name: source}`` to choose the names requests use. The first is the default.
            Default: the registry's default model.
        settings: limits and batching (:class:`ServeSettings`).
        predictor_options: keyword arguments for the Predictors built from names or paths
            (device, precision, size, resolution, backend, ...).

    Returns:
        The app; run it with ``uvicorn.run(app)`` or ``birefnet serve``.
    """
    settings = settings or ServeSettings()
    state = ServerState(settings=settings, models=_build_models(models, settings, predictor_options))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state.stopping = False
        for served in state.models.values():
            served.batcher.start()
        logger.info(
            "serving %s", ", ".join(f"{m.name} ({m.predictor.describe()})" for m in state.models.values())
        )
        try:
            yield
        finally:
            state.stopping = True
            for served in state.models.values():
                await _run_sync(served.batcher.stop)

    app = FastAPI(
        title="BiRefNet background removal",
        version=__version__,
        description=(
            "Remove image backgrounds with BiRefNet. Send an image to `POST /v1/remove-background` as "
            "a multipart field `file` (options as form fields) or as the raw body with an image content "
            "type (options as query parameters)."
        ),
        lifespan=lifespan,
    )
    app.state.birefnet = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        body = {"detail": _validation_message(errors), "error": "invalid_option", "errors": errors}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return _error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.post(
        ENDPOINT,
        summary="Remove the background of one image",
        responses={
            200: {
                "description": "the output image (or JSON with it in base64 when response=json)",
                "content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}},
            },
            **_ERRORS_DOC,
        },
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def remove_background(
        request: Request,
        file: Annotated[UploadFile | None, File(description="the image (multipart uploads)")] = None,
        model: Annotated[str | None, Form()] = None,
        output: Annotated[Literal["rgba", "mask", "composite"] | None, Form()] = None,
        format: Annotated[Literal["png", "webp", "jpg"], Form()] = "png",
        quality: Annotated[int | None, Form(ge=1, le=100)] = None,
        bg_color: Annotated[str | None, Form()] = None,
        threshold: Annotated[float | None, Form(gt=0.0, le=1.0)] = None,
        refine_foreground: Annotated[bool, Form()] = False,
        response: Annotated[Literal["image", "json"], Form()] = "image",
    ) -> Response:
        """Multipart: field ``file`` plus option fields. Raw body (``Content-Type: image/png`` etc.):
        options as query parameters, e.g. ``?output=mask&response=json``."""
        media = _media_type(request.headers.get("content-type"))
        if media == "multipart/form-data":
            if file is None:
                raise APIError(
                    422, "missing_file", "no form field 'file' in the upload; send the image as field 'file'"
                )
            part_type = _media_type(file.content_type)
            if part_type and not _is_image_type(part_type):
                raise APIError(
                    415,
                    "unsupported_media_type",
                    f"the file part has content type {part_type!r}; send an image (image/png, image/jpeg, ...)",
                )
            data = await file.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise APIError(413, "too_large", _too_large_message(settings, len(data)))
            options = RemoveOptions(
                model=model,
                output=output,
                format=format,
                quality=quality,
                bg_color=bg_color,
                threshold=threshold,
                refine_foreground=refine_foreground,
                response=response,
            )
        elif _is_image_type(media):
            try:
                options = RemoveOptions.model_validate(dict(request.query_params))
            except ValidationError as e:
                errors = jsonable_encoder(e.errors(), custom_encoder={Exception: str})
                raise APIError(422, "invalid_option", _validation_message(errors)) from e
            data = await request.body()
            if len(data) > settings.max_upload_bytes:
                raise APIError(413, "too_large", _too_large_message(settings, len(data)))
        else:
            raise APIError(
                415,
                "unsupported_media_type",
                f"content type {media or '(none)'!r} is not accepted; send multipart/form-data with a "
                "field 'file', or the image bytes with Content-Type image/png, image/jpeg, ... or "
                "application/octet-stream",
            )
        return await process(state, data, options)

    @app.get("/v1/models", summary="The models this server has loaded")
    async def list_models() -> dict[str, Any]:
        names = list(state.models)
        return {
            "default": names[0],
            "models": [m.info(default=i == 0) for i, m in enumerate(state.models.values())],
        }

    @app.get("/healthz", summary="Liveness and queue state")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "stopping" if state.stopping else "ok",
            "version": __version__,
            "uptime_s": round(time.time() - state.started_at, 1),
            "models": list(state.models),
            "in_flight": state.in_flight,
            "capacity": settings.queue_size,
            "served": state.served,
            "rejected": state.rejected,
            "workers": {
                name: {
                    "alive": m.batcher.alive,
                    "busy": m.batcher.busy,
                    "waiting": m.batcher.depth,
                    "batches": m.batcher.batches,
                    "images": m.batcher.jobs_done,
                }
                for name, m in state.models.items()
            },
        }

    if settings.web_page:
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(UploadGuard, state=state)
    return app
