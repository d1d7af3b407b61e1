"""``Record``: the package's immutable records, a ``typing.NamedTuple`` made without ``eval``.

``llmmem check`` creates ~50 record classes at start-up, and ``typing.NamedTuple`` spent 70-120 us on
each (Python 3.9-3.13; ~4 ms of the 1.3x budget in benchmarks/cli_startup.py): ``collections.namedtuple``
compiles a ``__new__`` per class with ``eval`` and typing wraps every annotation and resets the bases.
A ``Record`` subclass is written the same way (annotated fields, defaults, methods, a docstring) and
behaves the same way (a tuple subclass with no ``__dict__``, ``_replace``, ``_asdict``, ``_make``,
``_fields``, ``_field_defaults``, the namedtuple repr, equality and hashing as tuples); its class is
made in ~17 us, and one ``__new__`` shared by every record binds the arguments.
Type checkers see ``typing.NamedTuple`` (the ``TYPE_CHECKING`` branch), so the fields stay typed.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any, Dict, Iterable, Tuple

try:  # the C field getter collections.namedtuple uses (CPython); a property elsewhere, as namedtuple does
    from _collections import _tuplegetter
except ImportError:  # pragma: no cover - PyPy
    def _tuplegetter(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)

__all__ = ["Record"]

_MISSING = object()


class _RecordType(type):
    """Turns a class body's annotations into tuple fields, as ``typing.NamedTupleMeta`` does."""

    def __new__(mcls, name: str, bases: Tuple[type, ...], namespace: Dict[str, Any]) -> type:
        if any(isinstance(base, _RecordType) and base._fields for base in bases):
            raise TypeError(f"{name}: a record with fields cannot be extended; declare a new record")
        fields = tuple(namespace.get("__annotations__", {}))
        defaults: Dict[str, Any] = {}
        for index, field in enumerate(fields):
            if field in namespace:
                defaults[field] = namespace[field]
            elif defaults:
                raise TypeError(f"{name}: field {field!r} without a default follows fields with defaults")
            namespace[field] = _tuplegetter(index, f"Alias for field number {index}")
        namespace["__slots__"] = ()
        namespace["_fields"] = fields
        namespace["_field_defaults"] = defaults
        namespace["__match_args__"] = fields
        # one default per field, _MISSING where the field has none: what __new__ fills a missing argument with
        namespace["_defaults_by_field"] = tuple(defaults.get(field, _MISSING) for field in fields)
        namespace["_field_index"] = {field: index for index, field in enumerate(fields)}
        namespace["_required"] = len(fields) - len(defaults)  # the fields without a default come first
        namespace["_size"] = len(fields)
        return super().__new__(mcls, name, bases, namespace)


if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:
    class Record(tuple, metaclass=_RecordType):
        """An immutable record; subclass it with annotated fields (see the module docstring)."""

        def __new__(cls, *args: Any, **kwargs: Any) -> "Record":
            given = len(args)
            if not kwargs and cls._required <= given <= cls._size:  # the common call: no names, the rest defaulted
                return tuple.__new__(cls, args + cls._defaults_by_field[given:] if given < cls._size else args)
            if given > cls._size:
                raise TypeError(f"{cls.__name__}() takes {cls._size} arguments, {given} given")
            values = [*args, *cls._defaults_by_field[given:]]
            index = cls._field_index
            for name, value in kwargs.items():
                at = index.get(name, -1)
                if at < given:
                    raise TypeError(f"{cls.__name__}() got an unexpected argument {name!r}" if at < 0
                                    else f"{cls.__name__}() got multiple values for {name!r}")
                values[at] = value
            if given < cls._required and any(value is _MISSING for value in values[given:cls._required]):
                missing = [name for name, value in zip(cls._fields, values) if value is _MISSING]
                raise TypeError(f"{cls.__name__}() missing required arguments: {missing}")
            return tuple.__new__(cls, values)

        @classmethod
        def _make(cls, iterable: Iterable[Any]) -> "Record":
            result = tuple.__new__(cls, iterable)
            if len(result) != len(cls._fields):
                raise TypeError(f"{cls.__name__}._make: expected {len(cls._fields)} values, got {len(result)}")
            return result

        def _replace(self, **changes: Any) -> "Record":
            result = tuple.__new__(type(self), map(changes.pop, self._fields, self))
            if changes:
                raise ValueError(f"{type(self).__name__}: got unexpected field names {sorted(changes)!r}")
            return result

        def _asdict(self) -> Dict[str, Any]:
            return dict(zip(self._fields, self))

        def __repr__(self) -> str:
            return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in zip(self._fields, self))})"

        def __getnewargs__(self) -> Tuple[Any, ...]:
            return tuple(self)
