"""A plain mutable record for settings and counters.

dataclasses would do the same, but importing it pulls in inspect and costs every
run (and every server) about 20 ms and 1.6 MB; most runs are short.
"""

from __future__ import annotations


class Record:
    """Fields are the class annotations and defaults the class values; a dict or
    list default is copied for each instance. Arguments go by position or name."""

    fields: tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names += [n for n in vars(klass).get("__annotations__", {}) if n not in names
                      and n != "fields"]
        cls.fields = tuple(names)

    def __init__(self, *args, **kwargs) -> None:
        if len(args) > len(self.fields):
            raise TypeError(f"{type(self).__name__} takes {len(self.fields)} fields")
        values = dict(zip(self.fields, args, strict=False))
        for name, value in kwargs.items():
            if name not in self.fields or name in values:
                raise TypeError(f"{type(self).__name__}: bad or repeated field {name!r}")
            values[name] = value
        for name in self.fields:
            if name not in values:
                try:
                    default = getattr(type(self), name)
                except AttributeError:
                    raise TypeError(f"{type(self).__name__}: missing field {name!r}") from None
                values[name] = type(default)(default) if isinstance(default, (dict, list)) \
                    else default
            setattr(self, name, values[name])

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, n) == getattr(other, n) for n in self.fields)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.fields)
        return f"{type(self).__name__}({inner})"
