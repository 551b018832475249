"""Event state encoding: orjson instead of the library's stdlib-json transcoder.

Event state here is plain JSON (strings, lists, dicts) plus the event timestamp, so a general-purpose
transcoding registry is not needed; orjson is several times faster on the write and projection paths.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Transcoder

__all__ = ["EventTranscoder"]


class EventTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        timestamp = state.get("timestamp")
        if isinstance(timestamp, str):
            state["timestamp"] = datetime.fromisoformat(timestamp)
        return state
