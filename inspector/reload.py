"""What a hot reload may change: each worker's model and the scoring section; the rest needs a restart."""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import UsageError

HOT_SCORING = ("reduction", "threshold")  # applied by a reload, with each camera's `model`


def plan_reload(old: Config, new: Config, groups: dict[str, list[str]]) -> tuple[dict[str, Path], list[str]]:
    """The model path each worker gets from `new`, and what differs from `old` but waits for a restart.

    groups: worker name -> the ids of the cameras it inspects. Raises UsageError when the new config cannot be
    applied without a restart at all: a camera added or removed, or cameras sharing a worker given different
    models.
    """
    old_ids = [c.id for c in old.cameras]
    new_by_id = {c.id: c for c in new.cameras}
    if sorted(old_ids) != sorted(new_by_id):
        raise UsageError(f"the cameras changed ({', '.join(old_ids)} -> {', '.join(new_by_id)}); restart to apply")
    models: dict[str, Path] = {}
    for worker, cams in groups.items():
        paths = {new_by_id[c].model for c in cams}
        if len(paths) > 1:
            raise UsageError(f"cameras {', '.join(cams)} share a worker and were given different models "
                             f"({', '.join(sorted(map(str, paths)))}); restart to apply")
        models[worker] = paths.pop()
    waiting = [f"cameras[{c.id}]" for c in old.cameras
               if c.model_copy(update={"model": new_by_id[c.id].model}) != new_by_id[c.id]]
    waiting += [f"scoring.{key}" for key in type(old.scoring).model_fields
                if key not in HOT_SCORING and getattr(old.scoring, key) != getattr(new.scoring, key)]
    waiting += [name for name in type(old).model_fields
                if name not in ("cameras", "scoring") and getattr(old, name) != getattr(new, name)]
    return models, waiting
