"""The mount(8) form of the ``cassfs`` command: ``cassfs OWNER/ENVIRONMENT MOUNTPOINT -o OPTS``.

``mount -t fuse.cassfs 1/prod /srv/www -o cache_dir=/var/cache/cassfs`` (or the same
as an ``/etc/fstab`` line) runs ``/sbin/mount.fuse3``, which runs
``/bin/sh -c "'cassfs' '1/prod' '/srv/www' '-o' 'rw,cache_dir=...,dev,suid'"``.
Before that, mount(8) drops ``x-*``, ``comment=`` and ``defaults``, adds ``rw`` (and
``noexec,nosuid,nodev`` for ``user``/``users``) and clears PATH, HOME and SHELL;
mount.fuse3 drops ``user``, ``users``, ``nouser``, ``auto``, ``noauto``, ``nofail``,
``_netdev``, ``setuid=`` and ``drop_privileges`` and adds ``dev`` and ``suid``
unless ``nodev``/``nosuid`` were given (fuse3 ``util/mount.fuse.c``).

:func:`to_up_args` turns that form into the arguments of ``cassfs up``.  Its
keywords are derived from the ``up`` command's click options (``--cache-dir`` →
``cache_dir``; a flag such as ``--debug`` is a bare ``debug``), so an option
added to ``cassfs up`` is a mount keyword by itself.  Pure logic: nothing here
touches the system.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import click

log = logging.getLogger(__name__)

#: The ``cassfs up`` options that the source OWNER/ENVIRONMENT gives.
SOURCE_PARAMS = ("owner", "environment")
#: The usage line of the mount form.
USAGE = "cassfs OWNER/ENVIRONMENT MOUNTPOINT [-o KEY[=VALUE],...]"
#: Where an unknown keyword's error sends the user.
WHERE_DOCUMENTED = (
    "the keywords are `cassfs up`'s options with _ for - (see `cassfs up --help` and "
    "README 'Mount at boot')"
)
#: Generic mount(8)/mount.fuse3/systemd options that a cassfs mount takes as given:
#: cassfs mounts are always read-write unless ``ro`` is a keyword of ``up``, nodev,
#: nosuid (libfuse's default, whatever mount.fuse3 adds), exec unless ``noexec`` (a
#: keyword of ``up``), allow_other and default_permissions.
IGNORED = frozenset(
    {
        "rw",
        "defaults",
        "auto",
        "noauto",
        "nofail",
        "_netdev",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "async",
        "allow_other",
        "default_permissions",
    }
)
#: Prefixes of generic options taken as given (systemd's and mount(8)'s own).
IGNORED_PREFIXES = ("x-", "comment=")
#: Generic options that are a value of a ``cassfs up`` option: name → (keyword, value).
MAPPED = {"noatime": ("atime", "noatime"), "relatime": ("atime", "relatime")}
#: Generic options a cassfs mount cannot honour, with what to do instead.
UNSUPPORTED = {
    "strictatime": "cassfs records access times by relatime or not at all: use noatime",
}


class MountFormError(ValueError):
    """Bad mount-form arguments; ``str()`` is one line saying what to do."""


@dataclass(frozen=True)
class Keyword:
    """One ``-o`` keyword: the ``cassfs up`` option string it stands for.

    ``flag``: a bare keyword (no value); ``param``: the click option, to check values.
    """

    option: str
    flag: bool
    param: click.Option


def keywords(command: click.Command) -> dict[str, Keyword]:
    """The ``-o`` keywords of ``command``'s long options, minus those of the source.

    ``--cache-dir`` → ``cache_dir``; the secondary name of a boolean flag
    (``--no-x``) is a keyword as well.
    """
    table: dict[str, Keyword] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in SOURCE_PARAMS:
            continue
        for names, flag in ((param.opts, param.is_flag), (param.secondary_opts, True)):
            for name in names:
                if name.startswith("--"):
                    table[name[2:].replace("-", "_")] = Keyword(name, flag, param)
    return table


def is_mount_form(args: Sequence[str], commands: Sequence[str]) -> bool:
    """True when ``args`` (after ``cassfs``) start with neither a command nor an option,
    and with a source (a ``/`` in it) or more than one argument: ``cassfs upp`` stays
    click's "No such command"."""
    if not args or args[0] in commands or args[0].startswith("-"):
        return False
    return "/" in args[0] or len(args) > 1


def split_options(text: str) -> list[str]:
    """Split ``-o`` text at commas outside double quotes, as libmount does.

    ``'a=1,b="x,y",c'`` → ``['a=1', 'b="x,y"', 'c']`` (empty items dropped).
    Raises :class:`MountFormError` for an unbalanced quote.
    """
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise MountFormError(f"unbalanced double quote in mount options {text!r}")
    items.append("".join(current))
    return [item for item in items if item]


def parse_source(source: str) -> tuple[str, str]:
    """``'1/prod'`` → ``('1', 'prod')``; the values are checked by ``up``'s options.

    Raises :class:`MountFormError` when ``source`` is not OWNER/ENVIRONMENT.
    """
    owner, slash, environment = source.partition("/")
    if not slash or not owner.isdigit() or not environment or "/" in environment:
        raise MountFormError(
            f"source {source!r} is not OWNER/ENVIRONMENT (e.g. 1/prod): give the tenant "
            f"as the mount's source, `{USAGE}`"
        )
    return owner, environment


def _check_value(command: click.Command, key: str, keyword: Keyword, value: str) -> None:
    param = keyword.param
    if param.multiple or param.nargs != 1:
        return  # click checks these when `up` parses them
    try:
        param.process_value(click.Context(command), value)
    except click.BadParameter as exc:
        raise MountFormError(f"mount option {key}={value}: {exc.message}") from exc


def option_args(command: click.Command, items: Sequence[str]) -> list[str]:
    """The ``up`` arguments for ``-o`` items (``['cache_dir=/c', 'debug']`` →
    ``['--cache-dir', '/c', '--debug']``); generic mount options mapped or dropped.

    Raises :class:`MountFormError` (one line) for an unknown keyword, a flag given
    a value, a keyword without its value or a value its option refuses.
    """
    table = keywords(command)
    args: list[str] = []
    for item in items:
        key, equals, value = item.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        keyword = table.get(key)
        if keyword is None and not equals and item in MAPPED and MAPPED[item][0] in table:
            key, value = MAPPED[item]
            keyword, equals = table[key], "="
        if keyword is None:
            if item in IGNORED or item.startswith(IGNORED_PREFIXES):
                log.debug("mount option %s taken as given", item)
                continue
            if item in UNSUPPORTED:
                raise MountFormError(f"mount option {item}: {UNSUPPORTED[item]}")
            if key in SOURCE_PARAMS:
                raise MountFormError(
                    f"mount option {key}: the source OWNER/ENVIRONMENT gives the tenant"
                )
            raise MountFormError(f"unknown mount option {key!r}: {WHERE_DOCUMENTED}")
        if keyword.flag:
            if equals:
                raise MountFormError(f"mount option {key} takes no value: write it bare, {key}")
            args.append(keyword.option)
            continue
        if not equals:
            raise MountFormError(f"mount option {key} needs a value: {key}=VALUE")
        _check_value(command, key, keyword, value)
        args += [keyword.option, value]
    return args


def to_up_args(command: click.Command, args: Sequence[str]) -> list[str]:
    """``['1/prod', '/srv/www', '-o', 'cache_dir=/c']`` → the arguments of ``up``:
    ``['/srv/www', '--owner', '1', '--environment', 'prod', '--fsname', '1/prod',
    '--cache-dir', '/c']`` (the fsname is the source, as mount(8) compares it).

    ``-o`` may repeat and may be glued (``-oOPTS``).  Raises :class:`MountFormError`
    (one line) for a bad source, missing or extra arguments and bad options.
    """
    positional: list[str] = []
    items: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "-o":
            if not rest:
                raise MountFormError(f"-o needs its options: `{USAGE}`")
            items += split_options(rest.pop(0))
        elif arg.startswith("-o"):
            items += split_options(arg[2:])
        elif arg.startswith("-") and arg != "-":
            raise MountFormError(f"unexpected argument {arg!r}: `{USAGE}`")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise MountFormError(
            f"expected a source and a mountpoint, got {len(positional)} argument(s): `{USAGE}`"
        )
    source, mountpoint = positional
    owner, environment = parse_source(source)
    if mountpoint.startswith("/dev/fd/"):
        raise MountFormError(
            f"mountpoint {mountpoint}: mount.fuse3's drop_privileges is not supported, remove it"
        )
    for name, value in zip(SOURCE_PARAMS, (owner, environment), strict=True):
        param = next(p for p in command.params if p.name == name)
        try:
            param.process_value(click.Context(command), value)
        except click.BadParameter as exc:
            raise MountFormError(f"source {source!r}: {name} {exc.message}") from exc
    # fsname = the source as fstab gives it, so that `mount -a` finds the line mounted
    fsname = ["--fsname", source] if "fsname" in keywords(command) else []
    return [
        mountpoint,
        "--owner",
        owner,
        "--environment",
        environment,
        *fsname,
        *option_args(command, items),
    ]
