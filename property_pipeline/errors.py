"""The errors the pipeline raises on purpose, under one root. Each kind says its exit status; the CLI's
command group (`cli/app.py`) is the one place that turns them into a one-line message and that status.

    PipelineError                    exit 1 unless a kind below says otherwise
    ├── ConfigurationError           exit 2: a setting, argument or file the pipeline cannot use
    │   ├── SettingsError            settings.py: an environment variable
    │   ├── CampaignConfigError      capture.py: the campaigns file, or a campaign without criteria
    │   ├── SchemaOutOfDate          db/engine.py: the database needs `db upgrade`
    │   ├── NothingThere             here: a read-only command found no pipeline database
    │   └── ParquetUnavailable       exports.py: pyarrow is not installed
    ├── PayloadError                 a payload file's name, place or content
    │   ├── PayloadPathError         store/layout.py: a name or path that is not allowed
    │   ├── PayloadJsonError         payload_json.py: bytes that are not JSON
    │   ├── PayloadFormatError       processing/parse.py: a page of the wrong shape (the file FAILS)
    │   └── RecordRejected           processing/records.py: one record breaks the contract (quarantined)
    ├── PropertyApiError             api/client.py: the API refused (ApiRequestRejected), kept failing
    │                                (ApiUnavailable) or sent a page above the size limit (ApiPageTooLarge)
    ├── CaptureError                 capture.py: a capture stopped early; what was stored is kept
    ├── ProcessingError              loading files
    │   ├── LostClaim                db/status.py: another worker owns the file now
    │   ├── ConflictsPersisted       processing/processor.py: concurrent transactions kept winning
    │   ├── WorkerFailed             processing/parallel.py: a worker process stopped
    │   └── ProcessingInterrupted    processing/parallel.py: SIGTERM or Ctrl-C (exit 128 + the signal)
    ├── ArchiveError                 retention/: an archive cannot be written, read or verified
    └── LockHeld                     db/locks.py: another command holds a lock (when not waiting)

A few more kinds never leave their module (a file held back, a file that fails, an attempt at a
page that failed); they are PipelineErrors too.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of the errors the pipeline raises on purpose."""

    exit_code: int = 1


class ConfigurationError(PipelineError):
    """A setting, argument or file the pipeline cannot use; the message names it and says what to do."""

    exit_code = 2


class NothingThere(ConfigurationError):
    """A read-only command was pointed at a database that does not exist or holds no pipeline tables."""


class PayloadError(PipelineError):
    """A payload file's name, place or content is not what the pipeline can take."""


class ProcessingError(PipelineError):
    """Loading payload files did not go as asked."""
