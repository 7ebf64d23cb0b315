"""Shared by every test: the project root on sys.path (so `pytest` works from any directory,
not only `python -m pytest` from the root), and tiny models (model.build_tiny) built on the
spot."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402


@pytest.fixture(scope="session")
def build_tiny_model(tmp_path_factory):
    """build(**sizes) -> the directory of a fresh tiny model of those sizes (model.build_tiny)."""
    def build(**sizes):
        path = str(tmp_path_factory.mktemp("tiny") / "model")
        M.build_tiny(path, **sizes)
        return path
    return build


@pytest.fixture(scope="module")
def tiny(build_tiny_model):
    """The smallest model the trainer tests run on (a test file may define its own `tiny`)."""
    return build_tiny_model(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, seed=0)
