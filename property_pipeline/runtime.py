"""The pieces every front door needs, built once from settings: the database engine and the payload store."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine

from property_pipeline.db.engine import create_db_engine, ensure_schema, open_existing_database
from property_pipeline.errors import ConfigurationError
from property_pipeline.settings import Settings
from property_pipeline.store.backend import PayloadStore
from property_pipeline.store.choose import open_payload_store
from property_pipeline.store.folder import PayloadRoot


@dataclass
class Pipeline:
    """Settings plus a ready database (schema created on an empty one) and the payload store.

    `read_only`: for commands that only look (status, verify, a dry run): nothing is created, not the
    database, its schema or the data root's folders; a database that is not there is NothingThere.
    """

    settings: Settings
    read_only: bool = False

    @cached_property
    def engine(self) -> Engine:
        if self.read_only:
            return open_existing_database(self.settings.db_url)
        engine = create_db_engine(self.settings.db_url)
        ensure_schema(engine)
        return engine

    @cached_property
    def store(self) -> PayloadStore:
        """The payload store the settings name: the data root folder (created), or object storage."""
        store = open_payload_store(self.settings.payloads_url, self.settings.logs_dir)
        if store.folder is None:
            return store
        root = store.folder
        if self.read_only:
            return root
        try:
            root.ensure_folders()
        except OSError as error:
            raise ConfigurationError(
                f"PROPERTY_PIPELINE_LOGS_DIR={self.settings.logs_dir} cannot be used as the data root: "
                f"{error.strerror or error} ({error.filename or self.settings.logs_dir}). Point it at a writable folder"
            ) from None
        return store

    @property
    def root(self) -> PayloadRoot | None:
        """The data root folder, when the payload store is one (for marker folders and reconcile)."""
        return self.store.folder

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
