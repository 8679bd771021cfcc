"""The property-search API client and the bundled sandbox server that speaks the same contract."""

from property_pipeline.api.client import (
    ApiPage,
    ApiRequestRejected,
    ApiUnavailable,
    PropertyApiError,
    PropertySearchClient,
)
from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, SandboxServer, generate_record, serve_forever

__all__ = [
    "ApiPage",
    "ApiRequestRejected",
    "ApiUnavailable",
    "FaultConfig",
    "PropertyApiError",
    "PropertySearchClient",
    "SandboxConfig",
    "SandboxServer",
    "generate_record",
    "serve_forever",
]
