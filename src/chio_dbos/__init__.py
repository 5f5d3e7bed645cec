"""Chio governance for Pydantic AI agents made durable with DBOS (``ChioDBOSAgent``)."""
