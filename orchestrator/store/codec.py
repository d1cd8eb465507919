"""The events' codec: the library's JSON format, written and read with orjson.

The library's `JSONTranscoder` writes an event's state with the `json` module and turns
each value of a registered type into `{"_type_": NAME, "_data_": ...}` (a timestamp:
`datetime_iso`); reading, it calls back into Python for every object of the document.
This transcoder writes the same bytes with orjson (about three times faster) and reads
them with orjson, then revives only the typed values the document holds: it counts
them first (`"_type_"` cannot occur inside a JSON string, where a quote is escaped),
and most events hold one, their timestamp, at the top.

What orjson refuses and the json module writes (keys that are not strings, integers beyond
64 bits) is written the library's way. One difference is kept out by the domain rather than
by the codec: orjson writes a
`UUID` as a plain string, where the library writes `uuid_hex`. No event or snapshot of
ours holds a UUID (ids in payloads are strings); tests/test_codec.py checks every event
a run of every flow records, byte for byte against the library's encoding.
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

TYPE_KEY = "_type_"
DATA_KEY = "_data_"
TYPE_MARK = b'"_type_"'


class OrjsonTranscoder(JSONTranscoder):
    """The library's JSON transcoder with its format, through orjson."""

    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=self._typed, option=orjson.OPT_PASSTHROUGH_DATETIME)
        except orjson.JSONEncodeError as exc:
            if isinstance(exc.__cause__, TranscodingNotRegisteredError):
                raise exc.__cause__ from None
            # What orjson refuses and the json module writes (keys that are not strings, integers
            # beyond 64 bits): the library's way, so that both write the same.
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        typed = data.count(TYPE_MARK)
        obj = orjson.loads(data)
        if not typed:
            return obj
        if type(obj) is dict:
            stamp = obj.get("timestamp")
            if type(stamp) is dict and len(stamp) == 2 and TYPE_KEY in stamp and DATA_KEY in stamp:
                obj["timestamp"] = self._revived(stamp)
                typed -= 1
                if not typed:
                    return obj
        return self._revive(obj, typed)[0]

    def _typed(self, obj: Any) -> dict[str, Any]:
        transcoding = self.types.get(type(obj))
        if transcoding is None:
            raise TranscodingNotRegisteredError(
                f"Object of type {type(obj)} is not serializable. Please define and register "
                "a custom transcoding for this type."
            )
        return {TYPE_KEY: transcoding.name, DATA_KEY: transcoding.encode(obj)}

    def _revived(self, typed: dict[str, Any]) -> Any:
        name = typed[TYPE_KEY]
        transcoding = self.names.get(name) if isinstance(name, str) else None
        if transcoding is None:
            raise TranscodingNotRegisteredError(
                f"Data serialized with name '{name}' is not deserializable. "
                "Please register a custom transcoding for this type."
            )
        data, _ = self._revive(typed[DATA_KEY], 1 << 30)
        return transcoding.decode(data)

    def _revive(self, obj: Any, typed: int) -> tuple[Any, int]:
        """Typed values revived inside `obj`, innermost first (as the library's object hook does),
        until `typed` of them were found; the object and how many are still to find."""
        if type(obj) is dict:
            if len(obj) == 2 and TYPE_KEY in obj and DATA_KEY in obj:
                return self._revived(obj), typed - 1
            for key, value in obj.items():
                if typed <= 0:
                    break
                if type(value) is dict or type(value) is list:
                    obj[key], typed = self._revive(value, typed)
        elif type(obj) is list:
            for index, value in enumerate(obj):
                if typed <= 0:
                    break
                if type(value) is dict or type(value) is list:
                    obj[index], typed = self._revive(value, typed)
        return obj, typed
