"""The one place a payload store is built from its setting (`PROPERTY_PIPELINE_PAYLOADS_URL`)."""

from __future__ import annotations

from pathlib import Path

from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.folder import PayloadRoot


def open_payload_store(payloads_url: str | None, logs_dir: Path | str) -> PayloadStore:
    """The folder `logs_dir` when `payloads_url` is unset, the folder it names, or the `s3://bucket/prefix` store."""
    if payloads_url and payloads_url.startswith("s3://"):
        from property_pipeline.store.s3 import S3Store  # boto3 is imported only by a process that uses S3

        return S3Store.from_url(payloads_url)
    return PayloadRoot(Path(payloads_url) if payloads_url else Path(logs_dir))
