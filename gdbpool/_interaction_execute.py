"""How an interaction's work is executed: cursors, callables, the NUMERIC typecaster.

Internal to :mod:`gdbpool.interaction` (see its module docstring for the
contract): ``_execute`` runs an SQL string on a cursor, or calls a callable
with ``conn`` (plus ``cursor=`` when its signature names it), applying
``cursor_factory`` and ``dec2float`` on the cursor or, for a callable that
opens its own cursors, on the connection for the call's duration.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from psycopg2 import extensions

if TYPE_CHECKING:
    from gdbpool.interaction import Interaction


def _to_float(value: str | None, cursor: Any) -> float | None:
    return None if value is None else float(value)


_DEC2FLOAT = extensions.new_type(extensions.DECIMAL.values, "GDBPOOL_DEC2FLOAT", _to_float)
_DEC2FLOAT_ARRAY = extensions.new_array_type(
    extensions.DECIMALARRAY.values, "GDBPOOL_DEC2FLOATARRAY", _DEC2FLOAT
)


def _execute(conn: Any, interaction: Interaction, cursor: Any = None) -> Any:
    work = interaction.work
    if isinstance(work, str):
        if cursor is not None and interaction.cursor_factory is None and not interaction.dec2float:
            cursor.execute(work, interaction.args)
            return cursor.fetchall() if cursor.description is not None else cursor.rowcount
        cur = _cursor(conn, interaction)
        try:
            cur.execute(work, interaction.args)
            return cur.fetchall() if cur.description is not None else cur.rowcount
        finally:
            cur.close()
    if _wants_cursor(work):
        cur = _cursor(conn, interaction)
        try:
            return _call(work, conn, interaction.args, {"cursor": cur})
        finally:
            cur.close()
    return _call_with_connection_options(conn, interaction)


def _cursor(conn: Any, interaction: Interaction) -> Any:
    factory = interaction.cursor_factory
    cur = conn.cursor() if factory is None else conn.cursor(cursor_factory=factory)
    if interaction.dec2float:
        extensions.register_type(_DEC2FLOAT, cur)
        extensions.register_type(_DEC2FLOAT_ARRAY, cur)
    return cur


def _call_with_connection_options(conn: Any, interaction: Interaction) -> Any:
    """A callable that opens its own cursors: apply the options on the connection, then undo."""
    factory = interaction.cursor_factory
    dec2float = interaction.dec2float
    if factory is None and not dec2float:
        return _call(interaction.work, conn, interaction.args, None)
    saved_factory = conn.cursor_factory
    types: dict[int, Any] = conn.string_types
    oids = (*extensions.DECIMAL.values, *extensions.DECIMALARRAY.values)
    saved_types = {oid: types[oid] for oid in oids if oid in types}
    if factory is not None:
        conn.cursor_factory = factory
    if dec2float:
        extensions.register_type(_DEC2FLOAT, conn)
        extensions.register_type(_DEC2FLOAT_ARRAY, conn)
    try:
        return _call(interaction.work, conn, interaction.args, None)
    finally:
        conn.cursor_factory = saved_factory
        if dec2float:
            for oid in oids:
                types.pop(oid, None)
            types.update(saved_types)


def _call(work: Any, conn: Any, args: Any, extra: dict[str, Any] | None) -> Any:
    kw = extra or {}
    lead: tuple[Any, ...] = (conn,)
    if kw and _cursor_mode(work) == "positional":
        lead = (conn, kw.pop("cursor"))
    if args is None:
        return work(*lead, **kw)
    if isinstance(args, tuple | list):
        return work(*lead, *args, **kw)
    if isinstance(args, Mapping):
        return work(*lead, **args, **kw)
    return work(*lead, args, **kw)


@functools.lru_cache(maxsize=1024)
def _signature_cursor_mode(func: Any) -> str | None:
    """``"positional"`` for ``f(conn, cursor, ...)``, ``"keyword"`` for another ``cursor``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return None
    for index, param in enumerate(params):
        if param.name == "cursor":
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            return "positional" if positional and index == 1 else "keyword"
    return None


def _cursor_mode(work: Any) -> str | None:
    # Bound methods are cached by their function so the cache holds no instance.
    func = getattr(work, "__func__", None)
    if func is None:
        return _signature_cursor_mode(work)
    mode = _signature_cursor_mode(func)
    # The bound instance fills the first parameter: f(self, conn, cursor) is positional.
    if mode == "keyword":
        names = list(inspect.signature(func).parameters)
        if names.index("cursor") == 2:
            return "positional"
    return mode


def _wants_cursor(work: Any) -> bool:
    return _cursor_mode(work) is not None
