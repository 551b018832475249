"""The JSON of the whole run, kept in bench/results/ (git-ignored) beside the printed table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["write_json"]


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(_clean(payload), indent=2, default=str) + "\n")
    return target
