"""camelCase <-> snake_case for OCPP payloads, with the library's exact rules, memoized.

The ocpp library converts every key of every message with a chain of regular expressions
(13% of the server's time under load). The key names are few, so each is converted once by
the library's own function and remembered.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case


@lru_cache(maxsize=4096)
def _snake_key(key: str) -> str:
    return next(iter(camel_to_snake_case({key: None})))


@lru_cache(maxsize=4096)
def _camel_key(key: str) -> str:
    return next(iter(snake_to_camel_case({key: None})))


def to_snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {_snake_key(k): to_snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_snake(v) for v in value]
    return value


def to_camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): to_camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_camel(v) for v in value]
    return value


def payload_of(result: Any) -> dict:
    """A call_result dataclass as a dict without None values (what the library's
    serialize_as_dict + remove_nones do, without dataclasses.asdict's deep copies)."""
    if dataclasses.is_dataclass(result):
        result = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return _without_nones(result)


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value if v is not None]
    if dataclasses.is_dataclass(value):
        return payload_of(value)
    return value
