"""The compile caches' files: one portable file of ``torch.compiler`` cache artifacts, loaded and saved."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def load_compile_cache(path: Path) -> int | None:
    """Load a ``save_compile_cache`` file into this process's compile caches; its size, or None if absent."""
    if not path.is_file():
        return None
    import torch

    data = path.read_bytes()
    torch.compiler.load_cache_artifacts(data)
    logger.info("loaded %d bytes of compile cache artifacts from %s", len(data), path)
    return len(data)


def save_compile_cache(path: Path) -> int | None:
    """Write every compile artifact of this process to ``path`` (atomically); its size, or None if none."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    data, _info = saved
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    staging.replace(path)
    logger.info("saved %d bytes of compile cache artifacts to %s", len(data), path)
    return len(data)
