import os
import sys

import pytest

# Tests import the shared references as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

import lite_boost  # noqa: E402,F401  (lets `import wan` work without CUDA)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def single_process(monkeypatch):
    """initialize_usp() as a plain single process: no torchrun variables."""
    from lite_boost.parallel import destroy_usp, initialize_usp

    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    destroy_usp()
    state = initialize_usp()
    yield state
    destroy_usp()
