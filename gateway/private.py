"""Files that hold customers' data (the database, the journal) are created readable by their owner only: 0600,
in folders the gateway creates 0700. Files that already exist keep the permissions an operator gave them."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)


def private_file(path: Path) -> None:
    """Create `path` (and its folder) as 0600 if it does not exist; leave an existing one as it is."""
    private_folder(path.parent)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, FILE_MODE))
