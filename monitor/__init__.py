"""fedsentinel's monitoring service: ingest, store, signals, export."""

__version__ = "0.1.0"
