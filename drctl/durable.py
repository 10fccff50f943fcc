"""Durable writes on the control node's own disk, for every layer (the journal in
``drctl.engine.store``, baselines in ``drctl.drivers.baseline``): a file is fsynced before it is
renamed into place, and then its directory, so that a crash leaves the old file or the new one.
Imports nothing of drctl.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a new directory entry durable (after creating or renaming a file in ``path``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
