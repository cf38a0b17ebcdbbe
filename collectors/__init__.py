"""What sends statistics into fedsentinel: HTTP SDK, JSON-lines files, Flower integration."""

from collectors.client import MonitorClient, MonitorError
from collectors.sink import JsonlWriter, ReportSink

__all__ = ["JsonlWriter", "MonitorClient", "MonitorError", "ReportSink"]
