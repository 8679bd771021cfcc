"""A local HTTP server that speaks the property-search API contract, with deterministic data and injectable faults."""

from property_pipeline.api.sandbox.config import FaultConfig, SandboxConfig
from property_pipeline.api.sandbox.records import generate_record
from property_pipeline.api.sandbox.server import SandboxServer, serve_forever

__all__ = ["FaultConfig", "SandboxConfig", "SandboxServer", "generate_record", "serve_forever"]
