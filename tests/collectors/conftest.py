from __future__ import annotations

from collections.abc import Iterator

import pytest

from .ingest_server import IngestServer, free_port


@pytest.fixture
def ingest_server() -> Iterator[IngestServer]:
    """A real HTTP ingest server on 127.0.0.1 and a free port, stopped at teardown."""
    server = IngestServer(free_port())
    server.start()
    yield server
    server.stop()
