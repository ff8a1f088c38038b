from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.shardgen

from servers import CountingServer, serve  # noqa: E402


@pytest.fixture
def http_dir(tmp_path) -> Iterator[tuple[str, CountingServer]]:
    """A folder served over HTTP on loopback (byte ranges, request counters): (folder, server)."""
    root = tmp_path / "www"
    root.mkdir()
    srv = serve(str(root))
    try:
        yield str(root), srv
    finally:
        srv.shutdown()
        srv.server_close()
