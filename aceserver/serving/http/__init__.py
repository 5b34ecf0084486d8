"""HTTP service for ACE models (FastAPI under uvicorn); see docs/serving.md.

`create_app(registry, settings)` builds the application; `aceserver serve` runs it.

    schema        request and response models: validation, OpenAPI document and API reference
    codec         JSON and msgpack bodies (extxyz: extended XYZ requests)
    compute       a validated request -> `model.evaluate` -> results (reads the `Evaluation`)
    error_replies `APIError` and the handlers that turn every failure into an `ErrorBody`
    registry      the served models by name, warm-up, hot reload (the catalogue: `aceserver.catalogue`)
    settings      the server's options and its lifecycle state
    dependencies  auth, body limits, the served model and readiness as FastAPI dependencies
    routers/      the routes, one router per resource
    counters      Prometheus counters and the middleware that times every request
    app           `create_app`: the routers, handlers, middleware and lifespan put together
"""
from .app import create_app
from .registry import ModelRegistry, ServedModel
from .settings import Settings

__all__ = ["Settings", "create_app", "ModelRegistry", "ServedModel"]
