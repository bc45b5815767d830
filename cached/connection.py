"""How to reach a Cassandra cluster: contact points, credentials, TLS, routing, consistency.

:class:`ConnectionSettings` is parsed and checked once (:meth:`ConnectionSettings.parse`)
from the options that ``cassfs up``, ``cassfs schema apply``, ``cassfs fsck`` and the
daemon share (:func:`connection_options`), and :func:`cached.store.make_cluster` builds
the driver's ``Cluster`` from it.  The password never travels on a command line: it
comes from ``CASSFS_PASSWORD`` or a file (``--password-file``), and neither
:meth:`ConnectionSettings.to_config` nor ``repr`` shows it.

This module does not import cassandra-driver (the front and the CLI load it).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from cached.api import ContactPoints

#: Consistency levels of reads and writes (the names of the driver's ``ConsistencyLevel``).
CONSISTENCY_LEVELS = (
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
)
#: Serial consistency levels of the lightweight transactions (LWTs).
SERIAL_LEVELS = ("SERIAL", "LOCAL_SERIAL")
DEFAULT_CONSISTENCY = "LOCAL_QUORUM"
DEFAULT_SERIAL_CONSISTENCY = "LOCAL_SERIAL"
#: Where the password comes from when no ``--password-file`` is given.
PASSWORD_ENV = "CASSFS_PASSWORD"
PASSWORD_HINT = f"{PASSWORD_ENV} or --password-file"

#: The ``status`` config keys (and daemon options) of a connection, besides contact points.
CONFIG_KEYS = (
    "username",
    "password_file",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "ssl_check_hostname",
    "local_dc",
    "consistency",
    "serial_consistency",
)


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything the driver needs to reach the cluster; build with :meth:`parse`.

    ``password`` is the one secret (from ``CASSFS_PASSWORD`` or ``password_file``);
    TLS is on when ``ssl_ca`` (a PEM file of the CA that signed the nodes'
    certificates) is set, with the node's address checked against its certificate
    unless ``ssl_check_hostname`` is False; ``ssl_cert``/``ssl_key`` are a client
    certificate (PEM).  ``local_dc`` pins DC-aware routing to that data center
    (None: the driver takes the first contact point's).
    """

    contact_points: ContactPoints
    username: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)
    password_file: Path | None = None
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    ssl_check_hostname: bool = True
    local_dc: str | None = None
    consistency: str = DEFAULT_CONSISTENCY
    serial_consistency: str = DEFAULT_SERIAL_CONSISTENCY

    @classmethod
    def of(cls, where: ContactPoints | ConnectionSettings) -> ConnectionSettings:
        """``where`` itself, or plain settings (no auth, no TLS) for contact points."""
        return where if isinstance(where, ConnectionSettings) else cls(where)

    @classmethod
    def parse(
        cls,
        contact_points: str | ContactPoints,
        *,
        username: str | None = None,
        password_file: str | os.PathLike[str] | None = None,
        ssl_ca: str | os.PathLike[str] | None = None,
        ssl_cert: str | os.PathLike[str] | None = None,
        ssl_key: str | os.PathLike[str] | None = None,
        ssl_check_hostname: bool = True,
        local_dc: str | None = None,
        consistency: str = DEFAULT_CONSISTENCY,
        serial_consistency: str = DEFAULT_SERIAL_CONSISTENCY,
        environ: Mapping[str, str] | None = None,
    ) -> ConnectionSettings:
        """Check the options and read the password; the settings.

        The password is ``environ[CASSFS_PASSWORD]`` (default ``os.environ``) or the
        contents of ``password_file`` without its trailing newline.  File paths are
        made absolute.  Raises ValueError with a one-line message saying what to do:
        a password without ``username`` or the reverse, both password sources, a file
        that does not exist or cannot be read, PEM files the TLS layer refuses, a TLS
        option without ``ssl_ca``, an unknown consistency level, an empty ``local_dc``.
        """
        env = os.environ if environ is None else environ
        points = (
            contact_points
            if isinstance(contact_points, ContactPoints)
            else ContactPoints.parse(contact_points)
        )
        username = username or None
        password_path = _existing(password_file, "password file", "give the file that holds it")
        password = env.get(PASSWORD_ENV) or None
        if password is not None and password_path is not None:
            raise ValueError(
                f"the password is given twice ({PASSWORD_ENV} and --password-file): "
                "unset one of them"
            )
        if password_path is not None:
            password = _read_password(password_path)
        if username is None and password is not None:
            raise ValueError(f"a password is given ({PASSWORD_HINT}) but no --username")
        if username is not None and password is None:
            raise ValueError(f"--username {username} needs a password: set {PASSWORD_HINT}")
        ca = _existing(ssl_ca, "TLS CA file", "give the PEM file of the CA of the nodes")
        cert = _existing(ssl_cert, "TLS client certificate", "give a PEM certificate file")
        key = _existing(ssl_key, "TLS client key", "give the PEM key of --ssl-cert")
        if ca is None and (cert is not None or key is not None):
            raise ValueError("--ssl-cert and --ssl-key need --ssl-ca (TLS is on with --ssl-ca)")
        if key is not None and cert is None:
            raise ValueError("--ssl-key needs --ssl-cert, the certificate of that key")
        if local_dc is not None and not local_dc.strip():
            raise ValueError("--local-dc is empty: give the data center name (nodetool status)")
        settings = cls(
            points,
            username=username,
            password=password,
            password_file=password_path,
            ssl_ca=ca,
            ssl_cert=cert,
            ssl_key=key,
            ssl_check_hostname=ssl_check_hostname,
            local_dc=local_dc,
            consistency=_level(consistency, CONSISTENCY_LEVELS, "--consistency"),
            serial_consistency=_level(serial_consistency, SERIAL_LEVELS, "--serial-consistency"),
        )
        settings.ssl_context()  # refuses bad PEM files now, with the file named
        return settings

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> ConnectionSettings:
        """Settings from a daemon ``status`` config (:meth:`to_config`); as :meth:`parse`."""
        options = {key: config[key] for key in CONFIG_KEYS if config.get(key) is not None}
        return cls.parse(str(config["contact_points"]), **options, environ=environ)

    def with_levels(self, consistency: str, serial_consistency: str) -> ConnectionSettings:
        """These settings with other (checked) consistency levels; ValueError as :meth:`parse`."""
        return replace(
            self,
            consistency=_level(consistency, CONSISTENCY_LEVELS, "--consistency"),
            serial_consistency=_level(serial_consistency, SERIAL_LEVELS, "--serial-consistency"),
        )

    def to_config(self) -> dict[str, Any]:
        """The settings as a daemon's ``status`` config shows them: never the password."""
        config: dict[str, Any] = {"contact_points": str(self.contact_points)}
        for key in CONFIG_KEYS:
            value = getattr(self, key)
            config[key] = str(value) if isinstance(value, Path) else value
        return config

    def differences(self, config: Mapping[str, Any]) -> list[str]:
        """The names of the settings (``contact_points``, ``username``...) that a daemon's
        ``status`` config gives otherwise (a key it lacks counts as its default)."""
        mine = self.to_config()
        defaults = ConnectionSettings(self.contact_points).to_config()
        return [
            key
            for key, value in mine.items()
            if config.get(key, defaults[key] if key != "contact_points" else None) != value
        ]

    def to_args(self) -> list[str]:
        """These settings as command-line options (contact points aside), for a command
        that re-runs ``cassfs``: never the password (``password_file``, or the
        ``CASSFS_PASSWORD`` the child inherits, gives it)."""
        args: list[str] = []
        for key, value in self.to_config().items():
            if key == "ssl_check_hostname":
                args += [] if value else ["--no-ssl-check-hostname"]
            elif key != "contact_points" and value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        return args

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context verifying the nodes against ``ssl_ca`` (None: no TLS).

        Raises ValueError naming the file when a PEM file cannot be loaded.
        """
        if self.ssl_ca is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = self.ssl_check_hostname
        try:
            context.load_verify_locations(cafile=str(self.ssl_ca))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"TLS CA file {self.ssl_ca} holds no usable PEM certificate ({exc}): "
                "give the PEM file of the CA of the nodes"
            ) from None
        if self.ssl_cert is not None:
            try:
                context.load_cert_chain(
                    str(self.ssl_cert), None if self.ssl_key is None else str(self.ssl_key)
                )
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"TLS client certificate {self.ssl_cert} or its key "
                    f"{self.ssl_key or '(in the same file)'} cannot be loaded ({exc}): "
                    "give PEM files of one certificate and its unencrypted key"
                ) from None
        return context


def _existing(path: str | os.PathLike[str] | None, what: str, advice: str) -> Path | None:
    if path is None or str(path) == "":
        return None
    absolute = Path(os.path.abspath(path))
    if not absolute.is_file():
        state = "is not a file" if absolute.exists() else "does not exist"
        raise ValueError(f"{what} {absolute} {state}: {advice}")
    if not os.access(absolute, os.R_OK):
        raise ValueError(f"{what} {absolute} is not readable by this user: fix its permissions")
    return absolute


def _read_password(path: Path) -> str:
    try:
        password = path.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"password file {path} cannot be read: {exc}") from None
    if not password:
        raise ValueError(f"password file {path} is empty: put the password in it")
    return password


def _level(name: str, allowed: tuple[str, ...], option: str) -> str:
    level = name.strip().upper()
    if level not in allowed:
        raise ValueError(f"{option} {name!r} is not one of {', '.join(allowed)}")
    return level


F = TypeVar("F", bound=Callable[..., Any])


def connection_options(levels: bool = True) -> Callable[[F], F]:
    """Click decorator: the connection options of ``up``, ``schema apply``, ``fsck`` and
    the daemon, each also from a ``CASSFS_*`` variable.

    The command receives them as keyword arguments named as :meth:`ConnectionSettings.parse`
    takes them (``username``, ``password_file``, ``ssl_ca``, ``ssl_cert``, ``ssl_key``,
    ``ssl_check_hostname``, ``local_dc``; with ``levels`` also ``consistency`` and
    ``serial_consistency``).  There is no password option, on purpose.
    """
    options = [
        click.option(
            "--username",
            envvar="CASSFS_USERNAME",
            default=None,
            help="Cassandra user (PasswordAuthenticator); the password comes from "
            f"{PASSWORD_ENV} or --password-file, never the command line (env CASSFS_USERNAME).",
        ),
        click.option(
            "--password-file",
            envvar="CASSFS_PASSWORD_FILE",
            default=None,
            help="File holding the password of --username (env CASSFS_PASSWORD_FILE).",
        ),
        click.option(
            "--ssl-ca",
            envvar="CASSFS_SSL_CA",
            default=None,
            help="PEM file of the CA of the nodes' certificates: turns TLS on and verifies "
            "them (env CASSFS_SSL_CA).",
        ),
        click.option(
            "--ssl-cert",
            envvar="CASSFS_SSL_CERT",
            default=None,
            help="PEM client certificate, for nodes that require one (env CASSFS_SSL_CERT).",
        ),
        click.option(
            "--ssl-key",
            envvar="CASSFS_SSL_KEY",
            default=None,
            help="PEM key of --ssl-cert, unencrypted (env CASSFS_SSL_KEY).",
        ),
        click.option(
            "--ssl-check-hostname/--no-ssl-check-hostname",
            envvar="CASSFS_SSL_CHECK_HOSTNAME",
            default=True,
            show_default=True,
            help="Check that a node's certificate names the address it is reached at "
            "(env CASSFS_SSL_CHECK_HOSTNAME).",
        ),
        click.option(
            "--local-dc",
            envvar="CASSFS_LOCAL_DC",
            default=None,
            help="Data center to send queries to (token-aware, DC-aware routing); default: "
            "the first contact point's (env CASSFS_LOCAL_DC).",
        ),
    ]
    if levels:
        options += [
            click.option(
                "--consistency",
                envvar="CASSFS_CONSISTENCY",
                default=DEFAULT_CONSISTENCY,
                show_default=True,
                help="Consistency level of reads and writes (env CASSFS_CONSISTENCY).",
            ),
            click.option(
                "--serial-consistency",
                envvar="CASSFS_SERIAL_CONSISTENCY",
                type=click.Choice(SERIAL_LEVELS, case_sensitive=False),
                default=DEFAULT_SERIAL_CONSISTENCY,
                show_default=True,
                help="Serial consistency of the lightweight transactions "
                "(env CASSFS_SERIAL_CONSISTENCY).",
            ),
        ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
