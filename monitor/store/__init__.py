"""Persistence: SQLModel tables, the database engine, and the queries the API and engine run."""

from monitor.store.db import Store

__all__ = ["Store"]
