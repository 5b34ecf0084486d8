"""HTTP service for ACE models (FastAPI under uvicorn); see docs/serving.md.

`create_app(registry, settings)` builds the application; `aceserver serve` runs it.
"""
from .app import Settings, create_app
from .registry import ModelRegistry, ServedModel

__all__ = ["Settings", "create_app", "ModelRegistry", "ServedModel"]
