"""POST /v1/models/{name}/data: labelled structures for a model served with `--learn`; GET the
model's learning state. Same token, body limit, codecs (JSON, msgpack) and error documents as
calculate.

Every structure of a post is checked (schema: shapes, NaN/inf, label magnitudes, required labels;
the model's elements; the server's size limits; the model evaluates it within the request's pair
budget, `--max-pairs`, as the refit will) before anything is logged: one refused structure refuses
the post and nothing is appended. An accepted post is one batch, one data version, on disk (fsynced)
before the 202 reply; the refit runs in the background (`aceserver.learning.ModelLearner`).

GET /v1/models/{name}/data/configurations gives the logged data back as a training file
(`aceserver.learning.export`: extended XYZ, lossless for float64, or msgpack), streamed: the log is
read a page of rows at a time as the reply is sent, never whole.
"""
from __future__ import annotations

import asyncio
import logging

from typing import Iterator, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from aceserver.learning import DataLogError, PostedLabelError, ModelLearner, PendingFull, labelled_config
from aceserver.learning import export

from .. import codec
from .. import dependencies as deps
from ..compute import PairBudget, _arrays, check_document, evaluate_structure
from ..error_replies import APIError, DecodeError, error_responses, from_validation_error
from ..learn_schema import REQUEST_KEYS, STRUCTURE_KEYS, DataPosted, DataRequest
from ..learners import learning_status, not_learnable
from ..registry import ServedModel, without_paths
from ..schema import LearningStatus, Property
from ..settings import Settings

router = APIRouter(prefix="/v1", tags=["learning"])
log = logging.getLogger("aceserver.http")
DATA_BODY = {"$ref": "#/components/schemas/DataRequest"}
CHUNK = 1 << 16                 # bytes of encoded configurations sent per step of a download
MEDIA = {"extxyz": codec.EXTXYZ, "msgpack": codec.MSGPACK}
CONFIGURATIONS_DOC = (
    "Every logged configuration of the model's posted batches, in data-version order (then in the order posted), "
    "streamed. Each carries its `data_version`, `config_type`, `status` (`fitted`: in the served model's fit; "
    "`pending`: logged, not fitted yet; `refused`: the fitter refused its batch, `refused_reason` says why), "
    "positions and cell (Å), pbc, energy (eV, total as posted), forces (eV/Å), and the virial (eV, W = -V·σ, "
    "3×3: as posted, or computed from a posted stress σ in eV/Å³) when one was posted. `extxyz`: extended XYZ, "
    "every float with 17 significant digits (reads back to the same float64), the virial as 9 numbers "
    "column-major (as ASE reads it), `units` in each frame's comment line. `msgpack`: a header map (`format`, "
    "`model`, `units`) then one map per configuration (`version`, `index`, `config_type`, `status`, `reason`, "
    "`numbers`, `positions`, `cell`, `pbc`, `energy`, `forces`, `virial`), arrays as {dtype, shape, data: raw "
    "little-endian bytes}. The data the model was first fitted on (its training files) are not in the log.")


async def learner(name: str, request: Request) -> ModelLearner:
    """The model's learner; 409 `not_learnable` for a model served without `--learn`."""
    found = request.app.state.learners.get(name)
    if found is None:
        raise APIError(409, "not_learnable", not_learnable(name)["reason"], "name")
    return found


def post_body(m: ServedModel, lrn: ModelLearner, body: bytes, codec_in: str, settings: Settings) -> dict:
    """Decode, check, validate every structure, then log them as one batch (in a worker thread)."""
    if codec_in == codec.EXTXYZ:
        raise APIError(415, "unsupported_media_type", f"labelled data are JSON or {codec.MSGPACK}", "Content-Type")
    try:
        doc = codec.decode(body, codec_in, settings.max_atoms, settings.max_structures)
        check_document(doc, settings.max_atoms, settings.max_structures, REQUEST_KEYS, STRUCTURE_KEYS)
        request = DataRequest.model_validate(doc)
    except DecodeError as ex:
        raise APIError(400, "malformed_body", str(ex), ex.field) from None
    except ValidationError as ex:
        raise from_validation_error(ex.errors(include_url=False)) from None
    configs = []
    budget = PairBudget(settings.max_pairs)
    for k, (where, s) in enumerate(request.named()):
        numbers, positions, cell, pbc = _arrays(m.model, s, where)       # 422 unknown_element, naming the atom
        # evaluated once as a calculate request would be: the refit will evaluate its basis there, so a
        # structure the model cannot evaluate, or one over the pair budget, is refused now, not at the refit
        evaluate_structure(m.model, s, {Property.energy}, where, settings.kernel_threads, budget)
        try:
            configs.append(labelled_config(numbers, positions, cell, pbc, s.energy, s.forces, virial=s.virial,
                                           stress=s.stress, config_type=s.config_type, elements=m.model.elements,
                                           where=where, frame=k))
        except PostedLabelError as ex:
            raise APIError(422, "invalid_input", str(ex), ex.field) from None
    try:
        entry = lrn.post(configs)
    except PendingFull as ex:
        raise APIError(503, "too_much_pending", str(ex), headers={"Retry-After": "10"}) from None
    except DataLogError as ex:        # logged for the operator with its path; the reply names none
        log.error("model %r: %s", m.name, ex)
        raise APIError(503, "log_unavailable", without_paths(str(ex)), headers={"Retry-After": "30"}) from None
    return entry


@router.post(
    "/models/{name}/data", status_code=202, response_model=DataPosted,
    summary="Post labelled structures (energy eV, forces eV/Å, virial eV or stress eV/Å³) to a learning model: "
            "logged durably as the next data version, then refitted and swapped in, in the background",
    responses={**error_responses(400, 404, 409, 413, 415, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": DATA_BODY}, codec.MSGPACK: {"schema": DATA_BODY}}}},
)
async def post_data(request: Request,
                    m: ServedModel = Depends(deps.served_model),
                    lrn: ModelLearner = Depends(learner),
                    ready: None = Depends(deps.require_ready),
                    codecs: tuple[str, str] = Depends(deps.body_codecs),
                    body: bytes = Depends(deps.limited_body),
                    settings: Settings = Depends(deps.settings)) -> JSONResponse:
    entry = await asyncio.get_running_loop().run_in_executor(
        request.app.state.executor, post_body, m, lrn, body, codecs[0], settings)
    status = await asyncio.to_thread(learning_status, m.name, request)
    reply = {"model": m.name, **{k: entry[k] for k in ("version", "sha256", "configs", "atoms", "added")},
             "learning": status}
    return JSONResponse(reply, status_code=202)


@router.get("/models/{name}/data", response_model=LearningStatus, responses=error_responses(404),
            summary="The learning state: the data version of the served model, pending versions, the last refit")
async def get_data(request: Request, m: ServedModel = Depends(deps.served_model)) -> dict:
    return await asyncio.to_thread(learning_status, m.name, request)


def _stream(lrn: ModelLearner, fmt: str, since: int, until: int | None) -> Iterator[bytes]:
    """The reply body in chunks of about CHUNK bytes (Starlette runs each step in a worker thread: one
    step per small configuration would cost more in thread hops than in encoding)."""
    encode = export.to_msgpack if fmt == "msgpack" else export.to_extxyz
    parts, size = ([export.header(lrn.name)] if fmt == "msgpack" else []), 0
    try:
        for rec in export.records(lrn.log, lrn.name, lrn.fitted, since, until):
            if rec["reason"] is not None:          # the fitter's words may name the server's files
                rec["reason"] = without_paths(rec["reason"])
            parts.append(encode(rec))
            size += len(parts[-1])
            if size >= CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
    except DataLogError as ex:    # headers are sent: the reply is cut short, the client sees an incomplete body
        log.error("model %r: download of its data stopped: %s", lrn.name, ex)
        raise
    yield b"".join(parts)


@router.get(
    "/models/{name}/data/configurations", description=CONFIGURATIONS_DOC, response_class=StreamingResponse,
    summary="The model's posted labelled configurations as a training file (extxyz or msgpack), streamed",
    responses={200: {"content": {v: {} for v in MEDIA.values()}, "description": CONFIGURATIONS_DOC},
               **error_responses(400, 404, 409)})
async def get_configurations(
        m: ServedModel = Depends(deps.served_model), lrn: ModelLearner = Depends(learner),
        format: Literal["extxyz", "msgpack"] = Query(
            "extxyz", description="extxyz (lossless text) or msgpack (raw float64)."),
        since: int = Query(0, ge=0, description="Only data versions above this one (0: all)."),
        until: int | None = Query(None, ge=1, description="Only data versions up to this one (default: all)."),
) -> StreamingResponse:
    if until is not None and until <= since:
        raise APIError(400, "invalid_input", f"until ({until}) must be above since ({since}): versions above "
                       "`since` and up to `until` are sent", "until")
    filename = f"{m.name}-data-{since + 1}-{until if until is not None else 'latest'}"
    filename = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in filename)
    ext = "xyz" if format == "extxyz" else "msgpack"
    return StreamingResponse(_stream(lrn, format, since, until), media_type=MEDIA[format],
                             headers={"Content-Disposition": f'attachment; filename="{filename}.{ext}"',
                                      "Cache-Control": "no-cache"})
