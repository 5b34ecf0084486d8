"""HTTP service for ACE models (FastAPI under uvicorn); see docs/serving.md.

`create_app(registry, settings)` builds the application; `server.make_server(app, ...)` gives the
uvicorn server that `aceserver serve` runs.

    schema        request and response models: validation, OpenAPI document and API reference
    job_schema    the jobs API's requests (a job spec + model + structures) and job statuses
    learn_schema  the data route's labelled structures (energy eV, forces eV/Å, virial eV or stress eV/Å³)
    learners      the learners of `--learn` models, handing refitted models to the registry
    codec         JSON and msgpack bodies (extxyz: extended XYZ requests)
    packed        the packed (columnar) batch: its checks, errors by index and its reply
    compute       a validated request -> `model.evaluate` -> results (reads the `Evaluation`)
    error_replies `APIError` and the handlers that turn every failure into an `ErrorBody`
    registry      the served models by name, warm-up, hot reload (the catalogue: `aceserver.catalogue`)
    settings      the server's options and its lifecycle state
    dependencies  auth, body limits, the served model and readiness as FastAPI dependencies
    routers/      the routes, one router per resource
    counters      Prometheus counters and the middleware that times every request
    lifecycle     a request in flight: cancelled when its client goes, cut at the drain deadline
    app           `create_app`: the routers, handlers, middleware and lifespan put together
    server        uvicorn for this app: JSON protocol errors, timeouts, connection limit, drain clock
"""
from .app import create_app
from .registry import ModelRegistry, ServedModel
from .settings import Settings

__all__ = ["Settings", "create_app", "ModelRegistry", "ServedModel"]
