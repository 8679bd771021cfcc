"""The `property-pipeline` command: thin front doors onto the core modules, one module per area."""

from property_pipeline.cli import core  # noqa: F401  (registers the core commands)
from property_pipeline.cli.app import main

__all__ = ["main"]
