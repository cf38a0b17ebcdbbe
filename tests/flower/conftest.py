"""Flower tests. Each module skips itself with a reason when flwr is missing (CI installs '.[test,flower]')."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_digits"
if str(EXAMPLE_DIR) not in sys.path:
    # Ray workers get the driver's sys.path, so the example package imports there too.
    sys.path.insert(0, str(EXAMPLE_DIR))


@pytest.fixture
def task_identity():  # type: ignore[no-untyped-def]
    """Flower's process-wide task identity, which Message() needs outside a running app."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved
