"""``Record`` behaves as the ``typing.NamedTuple`` it replaced: each check builds the same class both ways
and compares what a caller sees (values, repr, equality, hashing, _replace, _asdict, pickling)."""

import pickle
from typing import NamedTuple, Optional, Tuple

import pytest

from pytest_llmmem.record import Record


class Shape(Record):
    """A record with a required field, defaults and a method."""

    name: str
    layers: int = 2
    heads: Optional[int] = None
    names: Tuple[str, ...] = ("q", "v")

    def doubled(self) -> int:
        return 2 * self.layers


class ShapeTuple(NamedTuple):
    name: str
    layers: int = 2
    heads: Optional[int] = None
    names: Tuple[str, ...] = ("q", "v")


CALLS = [(("gpt",), {}), (("gpt", 4), {"names": ("o",)}), ((), {"name": "x", "heads": 8}), (("a", 1, 2, ("k",)), {})]


@pytest.mark.parametrize("args, kwargs", CALLS)
def test_a_record_holds_what_a_named_tuple_holds(args, kwargs):
    mine, theirs = Shape(*args, **kwargs), ShapeTuple(*args, **kwargs)
    assert tuple(mine) == tuple(theirs)
    assert mine == theirs and hash(mine) == hash(theirs)  # compared and hashed as tuples, as before
    assert repr(mine) == repr(theirs).replace("ShapeTuple(", "Shape(")
    assert mine._asdict() == theirs._asdict()
    assert mine._replace(layers=7, heads=1) == theirs._replace(layers=7, heads=1)
    assert type(mine._replace(layers=7)) is Shape
    assert (mine.name, mine.layers, mine.heads, mine.names) == tuple(theirs)


def test_the_class_describes_its_fields_as_a_named_tuple_does():
    assert Shape._fields == ShapeTuple._fields == ("name", "layers", "heads", "names")
    assert Shape._field_defaults == ShapeTuple._field_defaults
    assert Shape.__match_args__ == Shape._fields
    assert Shape._make(["b", 3, None, ()]) == ("b", 3, None, ())
    assert Shape("c").doubled() == 4 and "a method" in Shape.__doc__


def test_a_record_is_immutable_and_has_no_instance_dict():
    shape = Shape("gpt")
    with pytest.raises(AttributeError):
        shape.layers = 3
    with pytest.raises(AttributeError):
        shape.extra = 1  # no __dict__: __slots__ = () as namedtuple sets
    assert not hasattr(shape, "__dict__")


def test_a_record_survives_pickling():
    shape = Shape("gpt", heads=4)
    assert pickle.loads(pickle.dumps(shape)) == shape and type(pickle.loads(pickle.dumps(shape))) is Shape


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "missing required arguments: ['name']"),
    (("a", 1, 2, (), 5), {}, "takes 4 arguments, 5 given"),
    (("a",), {"name": "b"}, "multiple values for 'name'"),
    (("a",), {"depth": 3}, "unexpected argument 'depth'"),
])
def test_a_wrong_call_is_a_type_error_as_for_a_named_tuple(args, kwargs, message):
    with pytest.raises(TypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Shape(*args, **kwargs)
    with pytest.raises(TypeError):
        ShapeTuple(*args, **kwargs)


def test_replace_refuses_a_field_the_record_does_not_have():
    with pytest.raises(ValueError, match="depth"):
        Shape("a")._replace(depth=1)


def test_a_field_without_a_default_cannot_follow_one_with_a_default():
    with pytest.raises(TypeError, match="'b' without a default"):
        class Bad(Record):
            a: int = 1
            b: int


def test_a_record_with_fields_cannot_be_extended():
    with pytest.raises(TypeError, match="cannot be extended"):
        class Longer(Shape):
            depth: int = 0
