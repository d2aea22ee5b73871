"""The HTTP API (Starlette + pydantic request models), served by uvicorn (``vsml-serve``).

Routes (JSON in and out; errors are ``{"error": message}`` with a 4xx/5xx):

* ``POST /v1/learners/{key}/learn`` ``{"x": [A floats], "y": label}`` or a
  batch ``{"x": [[A floats], ...], "y": [labels]}`` -> the predictions made
  before learning, class probabilities, the key's step count. Answered only
  once what was learned is durable in the store.
* ``POST /v1/learners/{key}/predict`` ``{"x": [A floats] or [[...], ...]}``.
* ``GET /v1/learners/{key}``: steps, model digest, sizes, state digest.
* ``DELETE /v1/learners/{key}``: forget the learner.
* ``GET /healthz`` (no auth: for load balancers), ``GET /metrics`` (Prometheus text).

Bad input -- malformed JSON (400), a bad key (400), wrong sizes, NaN/inf,
unknown labels, unknown fields (422), a body over the limit (413), a missing
or wrong token (401) -- changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .auth import BodyTooLarge, TokenCheck
from .service import BadInput, BadKey, NotFound, Service
from .store import BusyError, ConflictError, StoreError

log = logging.getLogger("vsml_runtime.serve")
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Handler = Callable[[Request], Awaitable[Response]]


class LearnBody(BaseModel):
    """One example (x [A], y int) or a batch learned in order (x [T, A], y [T])."""

    model_config = ConfigDict(extra="forbid")
    x: list[FiniteFloat] | list[list[FiniteFloat]]
    y: StrictInt | list[StrictInt]


class PredictBody(BaseModel):
    """One example x [A] or rows x [n, A], each predicted from the current state."""

    model_config = ConfigDict(extra="forbid")
    x: list[FiniteFloat] | list[list[FiniteFloat]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: ValidationError) -> tuple[int, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return 400, "malformed JSON: " + "; ".join(str(e["msg"]) for e in errors)[:300]
    parts: dict[str, str] = {}  # first error per field (a union reports one per branch)
    for e in errors:
        field = str(e["loc"][0]) if e["loc"] else "body"
        where = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "float"))))
        parts.setdefault(field, f"{where or 'body'}: {e['msg']}")
    return 422, "; ".join(list(parts.values())[:3])


def make_app(
    service: Service,
    *,
    token: str | None = None,
    max_body_bytes: int = 4 * 2**20,
    threads: int = 8,
) -> Starlette:
    """The ASGI app over ``service``; blocking work runs on at most ``threads`` worker threads."""
    check = TokenCheck(token)
    metrics = service.metrics
    state: dict[str, Any] = {}

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise BodyTooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        if "limiter" not in state:  # made in the event loop, on first use
            state["limiter"] = anyio.CapacityLimiter(threads)
        return await anyio.to_thread.run_sync(fn, *args, limiter=state["limiter"])

    def endpoint(route: str, handler: Handler, *, open_route: bool = False) -> Handler:
        async def run(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if not open_route and not check.allows(request.headers.get("authorization")):
                    response = _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
                else:
                    response = await handler(request)
            except BodyTooLarge:
                response = _error(413, f"request body over {max_body_bytes} bytes")
            except ValidationError as exc:
                response = _error(*_validation_message(exc))
            except BadKey as exc:
                response = _error(400, str(exc))
            except BadInput as exc:
                response = _error(422, str(exc))
            except NotFound:
                response = _error(404, "no such learner")
            except BusyError as exc:
                response = _error(503, str(exc), {"Retry-After": "1"})
            except ConflictError as exc:
                response = _error(409, str(exc))
            except StoreError as exc:
                log.error("store error on %s: %s", route, exc)
                response = _error(503, "store unavailable; nothing was learned", {"Retry-After": "1"})
            except Exception:
                log.exception("internal error on %s", route)
                response = _error(500, "internal error")
            status = str(response.status_code)
            metrics.inc("vsml_requests_total", route=route, method=request.method, status=status)
            metrics.observe(time.perf_counter() - t0, route=route)
            if response.status_code >= 400:
                metrics.inc("vsml_errors_total", status=status)
            return response

        return run

    async def learn(request: Request) -> Response:
        key = request.path_params["key"]
        body = LearnBody.model_validate_json(await body_of(request))
        return JSONResponse(await blocking(service.learn, key, body.x, body.y))

    async def predict(request: Request) -> Response:
        key = request.path_params["key"]
        body = PredictBody.model_validate_json(await body_of(request))
        return JSONResponse(await blocking(service.predict, key, body.x))

    async def learner(request: Request) -> Response:
        key = request.path_params["key"]
        if request.method == "DELETE":
            return JSONResponse({"key": key, "deleted": await blocking(service.delete, key)})
        return JSONResponse(await blocking(service.info, key))

    async def healthz(request: Request) -> Response:
        return JSONResponse(await blocking(service.health))

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.store.close()

    routes = [
        Route("/v1/learners/{key}/learn", endpoint("/v1/learners/{key}/learn", learn), methods=["POST"]),
        Route("/v1/learners/{key}/predict", endpoint("/v1/learners/{key}/predict", predict), methods=["POST"]),
        Route("/v1/learners/{key}", endpoint("/v1/learners/{key}", learner), methods=["GET", "DELETE"]),
        Route("/healthz", endpoint("/healthz", healthz, open_route=True), methods=["GET"]),
        Route("/metrics", endpoint("/metrics", prometheus), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
