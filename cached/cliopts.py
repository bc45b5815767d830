"""Click parameter types shared by the daemon's command line and ``cassfs``'s."""

from __future__ import annotations

import click

from cached.api import parse_size


class ByteSize(click.ParamType):
    """A size of 1 MiB or more, given as bytes or with K/M/G/T (:func:`parse_size`);
    converts to bytes (int).  A bad value is a usage error naming the option."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: The one instance options use (``type=BYTE_SIZE``).
BYTE_SIZE = ByteSize()
