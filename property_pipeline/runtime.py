"""The pieces every front door needs, built once from settings: the database engine and the payload root."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine

from property_pipeline.db.engine import create_db_engine, ensure_schema
from property_pipeline.settings import Settings
from property_pipeline.store.layout import PayloadRoot


@dataclass
class Pipeline:
    """Settings plus a ready database (schema created on an empty one) and payload folders."""

    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        engine = create_db_engine(self.settings.db_url)
        ensure_schema(engine)
        return engine

    @cached_property
    def root(self) -> PayloadRoot:
        root = PayloadRoot(self.settings.logs_dir)
        root.ensure_folders()
        return root

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
