"""What sends statistics into fedsentinel: HTTP SDK, JSON-lines files, Flower integration."""

from collectors.client import FlushResult, MonitorClient, MonitorError
from collectors.sink import JsonlWriter, ReportSink

__all__ = ["FlushResult", "JsonlWriter", "MonitorClient", "MonitorError", "ReportSink"]
