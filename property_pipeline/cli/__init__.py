"""The `property-pipeline` command: thin front doors onto the core modules, one module per area."""

from property_pipeline.cli import capture, core, export, replay, retention  # noqa: F401  (each module registers its commands)
from property_pipeline.cli.app import main

__all__ = ["main"]
