"""Integration tests run the real processes (host agent, broker, VMs) under a run directory
of their own: ``HCINET_STATE_DIR`` points into the module's tmp directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scenarios import rundir


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``HCINET_STATE_DIR`` for the module: run directories live under tmp."""
    path = tmp_path_factory.mktemp("hcinet-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(rundir.ENV_STATE_DIR, str(path))
        mp.delenv("HCINET_DEPLOYMENT", raising=False)
        yield path
