"""The errors the pipeline raises on purpose, under one root; the CLI maps each kind to a message and an exit code.

    PipelineError
    └── ConfigurationError        a setting, argument or file the pipeline cannot use   (exit 2)
        └── NothingThere          a read-only command found no pipeline database there (exit 2)

Other errors of the core subclass PipelineError where they are defined (see docs/design.md).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of the errors the pipeline raises on purpose."""


class ConfigurationError(PipelineError):
    """A setting, argument or file the pipeline cannot use; the message names it and says what to do."""


class NothingThere(ConfigurationError):
    """A read-only command was pointed at a database that does not exist or holds no pipeline tables."""
