"""POST /v1/models/{name}/calculate: energies, forces, stresses of structures.

The body is read here (bounded, `deps.limited_body`), then decoded, validated, evaluated and
encoded in a worker thread (`evaluate_body`), so the event loop keeps answering /healthz during
long evaluations (the numba kernels release the GIL). Meanwhile the connection is watched: a
client that goes away stops its evaluation before the next structure (`lifecycle.py`).
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from .. import codec
from .. import dependencies as deps
from .. import packed
from ..compute import check_document, check_limits, evaluate_packed, evaluate_request
from ..error_replies import APIError, DecodeError, error_responses, from_validation_error
from ..counters import Metrics
from ..lifecycle import until_done_or_gone
from ..registry import ServedModel
from ..schema import CalculateRequest, CalculateResponse, PackedRequest, Property
from ..settings import Settings

router = APIRouter(prefix="/v1")

CALC_BODY = {"$ref": "#/components/schemas/CalculateRequest"}
# msgpack bodies are a `structures`/`structure` request or a packed batch (`packed.py`)
MSGPACK_BODY = {"oneOf": [CALC_BODY, {"$ref": "#/components/schemas/PackedRequest"}]}
MSGPACK_REPLY = {"oneOf": [{"$ref": "#/components/schemas/CalculateResponse"},
                           {"$ref": "#/components/schemas/PackedResponse"}]}


def evaluate_body(m: ServedModel, body: bytes, codec_in: str, codec_out: str, settings: Settings,
                  cancel: threading.Event | None = None, properties: str | None = None) -> tuple[bytes, int, int, float]:
    """Decode, check the limits, validate, evaluate and encode one request (in a worker thread);
    returns the encoded reply, the atoms and structures evaluated, and the seconds in `evaluate`.
    Once `cancel` is set, `compute.Abandoned` is raised before the next structure. `properties`:
    the query parameter (comma-separated), for bodies that cannot name them (extended XYZ)."""
    try:
        doc = codec.decode(body, codec_in, settings.max_atoms, settings.max_structures)
        if isinstance(doc, dict) and "packed" in doc:
            return evaluate_packed_body(m, doc, codec_in, codec_out, settings, cancel, properties)
        check_document(doc, settings.max_atoms, settings.max_structures)
        if properties is not None:
            doc = with_query_properties(doc, properties)
        request = CalculateRequest.model_validate(doc)
    except DecodeError as ex:
        raise APIError(400, "malformed_body", str(ex), ex.field) from None
    except ValidationError as ex:
        raise from_validation_error(ex.errors(include_url=False)) from None
    check_limits(request, settings.max_atoms, settings.max_structures)
    t0 = time.perf_counter()
    results = evaluate_request(m.model, request, m.has_committee, settings.kernel_threads, settings.max_pairs,
                               cancel, name=m.name, max_descriptor_values=settings.max_descriptor_values)
    seconds = time.perf_counter() - t0
    payload = {"model": m.name, "sha256": m.sha256, "results": results}
    atoms = sum(len(s.positions) for s in request.structure_list())
    return codec.encode(payload, codec_out), atoms, len(results), seconds


def evaluate_packed_body(m: ServedModel, doc: dict, codec_in: str, codec_out: str, settings: Settings,
                         cancel: threading.Event | None, properties: str | None) -> tuple[bytes, int, int, float]:
    """`evaluate_body` for a packed batch (`packed.py`): msgpack in and out, no per-structure objects."""
    if codec_in != codec.MSGPACK or codec_out != codec.MSGPACK:
        raise APIError(422, "invalid_input", "packed: a packed batch is sent and answered in msgpack (Content-Type "
                       "and Accept: application/msgpack)", "packed")
    if properties is not None:
        doc = with_query_properties(doc, properties)
    try:
        request = PackedRequest.model_validate(doc)
    except ValidationError as ex:
        raise from_validation_error(ex.errors(include_url=False)) from None
    batch = packed.read_packed(request.packed, settings.max_atoms, settings.max_structures)
    t0 = time.perf_counter()
    reply = evaluate_packed(m.model, request, batch, m.has_committee, settings.kernel_threads, settings.max_pairs,
                            cancel, name=m.name, max_descriptor_values=settings.max_descriptor_values)
    seconds = time.perf_counter() - t0
    payload = {"model": m.name, "sha256": m.sha256, "packed": reply}
    return codec.encode(payload, codec_out), int(batch.offsets[-1]), len(batch), seconds


MAX_QUERY_PROPERTIES = 2 * len(Property)


def with_query_properties(doc, properties: str):
    """The decoded document with the `properties` query parameter as its `properties` list; a body
    that names them too is refused (one place says what is computed)."""
    if not isinstance(doc, dict):
        return doc                                  # the schema names the problem
    if "properties" in doc:
        raise APIError(422, "invalid_input", "properties: given both in the body and as a query parameter; "
                       "give one", "properties")
    names = [p.strip() for p in properties.split(",", MAX_QUERY_PROPERTIES) if p.strip()]
    if len(names) > MAX_QUERY_PROPERTIES:
        raise APIError(422, "invalid_input", f"properties: more than {MAX_QUERY_PROPERTIES} names in the query "
                       "parameter", "properties")
    return {**doc, "properties": names}


# The dependencies run in the order given: the model is looked up (404) before readiness (503), the
# Content-Type (415) before the body is read (413).
@router.post(
    "/models/{name}/calculate",
    response_model=CalculateResponse,
    summary="Energy (eV), forces (eV/Å), stress (eV/Å³), virial (eV), per-atom energies (eV) and uncertainty "
            "(γ, committee spreads) of structures",
    responses={
        200: {"content": {codec.MSGPACK: {"schema": MSGPACK_REPLY}},
              "description": "Results, one per structure; JSON or msgpack by the Accept header. A packed batch "
                             "is answered packed (PackedResponse: one array per property)."},
        **error_responses(400, 404, 413, 415, 503),
    },
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": CALC_BODY}, codec.MSGPACK: {"schema": MSGPACK_BODY}}}},
)
async def calculate(request: Request,
                    start: float = Depends(deps.started_at),
                    m: ServedModel = Depends(deps.served_model),
                    ready: None = Depends(deps.require_ready),
                    codecs: tuple[str, str] = Depends(deps.body_codecs),
                    body: bytes = Depends(deps.limited_body),
                    settings: Settings = Depends(deps.settings),
                    metrics: Metrics = Depends(deps.metrics),
                    executor: ThreadPoolExecutor = Depends(deps.executor),
                    properties: str | None = Query(
                        None, max_length=1000, description="Outputs to return, comma-separated (e.g. "
                        "`energy,forces,max_gamma`), as the body's `properties` list, for bodies that cannot "
                        "name them (extended XYZ); not with a body that has `properties`.")) -> Response:
    codec_in, codec_out = codecs
    cancel = threading.Event()
    work = asyncio.get_running_loop().run_in_executor(
        executor, evaluate_body, m, body, codec_in, codec_out, settings, cancel, properties)
    payload, atoms, structures, seconds = await until_done_or_gone(work, request.receive, cancel)
    metrics.count_evaluated(m.name, atoms, structures)
    # Server-Timing (ms): time in model.evaluate and in this handler, for clients measuring overhead
    timing = f"evaluate;dur={1e3 * seconds:.3f}, handler;dur={1e3 * (time.perf_counter() - start):.3f}"
    return Response(payload, media_type=codec_out, headers={"Server-Timing": timing})
