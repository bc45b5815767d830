"""ConnectionSettings: parsing and checking the connection options, no node needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cassandra import ConsistencyLevel

from cached.api import ContactPoints, daemon_command
from cached.connection import CONSISTENCY_LEVELS, SERIAL_LEVELS, ConnectionSettings

POINTS = "10.0.0.1:9042,10.0.0.2"
NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate and its key (openssl), and a file that is not PEM."""
    where = tmp_path_factory.mktemp("pem")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=test"],
        check=True, capture_output=True,
    )  # fmt: skip
    junk = where / "junk.pem"
    junk.write_text("not a certificate\n")
    return {"cert": cert, "key": key, "junk": junk}


def test_plain_defaults() -> None:
    settings = ConnectionSettings.parse(POINTS, environ=NO_ENV)
    assert settings.contact_points == ContactPoints(("10.0.0.1", "10.0.0.2"), 9042)
    assert settings.username is None and settings.password is None
    assert settings.ssl_context() is None
    assert (settings.consistency, settings.serial_consistency) == ("LOCAL_QUORUM", "LOCAL_SERIAL")
    assert settings == ConnectionSettings.of(settings.contact_points)


def test_levels_are_the_drivers() -> None:
    assert set(CONSISTENCY_LEVELS) | set(SERIAL_LEVELS) == set(ConsistencyLevel.name_to_value)
    settings = ConnectionSettings.parse(
        POINTS, consistency="one", serial_consistency="serial", environ=NO_ENV
    )
    assert (settings.consistency, settings.serial_consistency) == ("ONE", "SERIAL")
    with pytest.raises(ValueError, match="--consistency 'SERIAL' is not one of"):
        ConnectionSettings.parse(POINTS, consistency="SERIAL", environ=NO_ENV)
    with pytest.raises(ValueError, match="--serial-consistency 'QUORUM'"):
        ConnectionSettings.parse(POINTS, serial_consistency="QUORUM", environ=NO_ENV)


def test_password_from_env_or_file(tmp_path: Path) -> None:
    from_env = ConnectionSettings.parse(POINTS, username="app", environ={"CASSFS_PASSWORD": "pw"})
    assert from_env.password == "pw" and from_env.password_file is None
    secret = tmp_path / "pw"
    secret.write_text("from file\n")
    from_file = ConnectionSettings.parse(
        POINTS, username="app", password_file=secret, environ=NO_ENV
    )
    assert from_file.password == "from file" and from_file.password_file == secret
    for shown in (repr(from_file), str(from_file.to_config()), " ".join(from_file.to_args())):
        assert "from file" not in shown


@pytest.mark.parametrize(
    ("options", "environ", "message"),
    [
        ({"username": "app"}, {}, "--username app needs a password: set CASSFS_PASSWORD or"),
        ({}, {"CASSFS_PASSWORD": "pw"}, "a password is given .* but no --username"),
        ({"username": "app", "password_file": "/nonexistent/pw"}, {},
         "password file /nonexistent/pw does not exist"),
        ({"ssl_ca": "/nonexistent/ca.pem"}, {}, "TLS CA file /nonexistent/ca.pem does not exist"),
        ({"local_dc": " "}, {}, "--local-dc is empty"),
    ],
)  # fmt: skip
def test_bad_options(options: dict[str, str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionSettings.parse(POINTS, **options, environ=environ)  # type: ignore[arg-type]


def test_password_twice_or_empty(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    with pytest.raises(ValueError, match="the password is given twice"):
        ConnectionSettings.parse(
            POINTS, username="a", password_file=secret, environ={"CASSFS_PASSWORD": "y"}
        )
    secret.write_text("\n")
    with pytest.raises(ValueError, match=f"password file {secret} is empty"):
        ConnectionSettings.parse(POINTS, username="a", password_file=secret, environ=NO_ENV)


def test_tls_files(pem: dict[str, Path]) -> None:
    settings = ConnectionSettings.parse(
        POINTS, ssl_ca=pem["cert"], ssl_cert=pem["cert"], ssl_key=pem["key"], environ=NO_ENV
    )
    context = settings.ssl_context()
    assert context is not None and context.check_hostname
    relaxed = ConnectionSettings.parse(
        POINTS, ssl_ca=pem["cert"], ssl_check_hostname=False, environ=NO_ENV
    )
    assert relaxed.ssl_context().check_hostname is False  # type: ignore[union-attr]
    assert "--no-ssl-check-hostname" in relaxed.to_args()
    with pytest.raises(ValueError, match=f"TLS CA file {pem['junk']} holds no usable PEM"):
        ConnectionSettings.parse(POINTS, ssl_ca=pem["junk"], environ=NO_ENV)
    with pytest.raises(ValueError, match="need --ssl-ca"):
        ConnectionSettings.parse(POINTS, ssl_cert=pem["cert"], environ=NO_ENV)
    with pytest.raises(ValueError, match="--ssl-key needs --ssl-cert"):
        ConnectionSettings.parse(POINTS, ssl_ca=pem["cert"], ssl_key=pem["key"], environ=NO_ENV)
    with pytest.raises(ValueError, match=f"TLS client certificate {pem['junk']} or its key"):
        ConnectionSettings.parse(
            POINTS, ssl_ca=pem["cert"], ssl_cert=pem["junk"], ssl_key=pem["key"], environ=NO_ENV
        )


def test_config_round_trip_and_differences(pem: dict[str, Path], tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw")
    settings = ConnectionSettings.parse(
        POINTS,
        username="app",
        password_file=secret,
        ssl_ca=pem["cert"],
        local_dc="dc1",
        consistency="QUORUM",
        environ=NO_ENV,
    )
    config = settings.to_config()
    assert ConnectionSettings.from_config(config, environ=NO_ENV) == settings
    assert settings.differences(config) == []
    assert settings.differences({**config, "local_dc": "dc2"}) == ["local_dc"]
    plain = ConnectionSettings.parse(POINTS, environ=NO_ENV)
    # a daemon of an older cassfs shows no connection keys: they count as defaults
    assert plain.differences({"contact_points": str(plain.contact_points)}) == []
    assert settings.differences({"contact_points": str(plain.contact_points)}) == [
        "username",
        "password_file",
        "ssl_ca",
        "local_dc",
        "consistency",
    ]


def test_daemon_command_has_no_password(tmp_path: Path, pem: dict[str, Path]) -> None:
    """The daemon's argv names the password file, never the password; it parses back."""
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    settings = ConnectionSettings.parse(
        POINTS,
        username="app",
        password_file=secret,
        ssl_ca=pem["cert"],
        ssl_check_hostname=False,
        serial_consistency="SERIAL",
        environ=NO_ENV,
    )
    config = {**settings.to_config(), "keyspace": "ks", "cache_ttl": 1, "cache_size": 2**20}
    command = daemon_command(tmp_path, config)
    assert "hunter2" not in " ".join(command)
    for flag in ("--username", "--password-file", "--ssl-ca", "--serial-consistency"):
        assert flag in command
    assert "--no-ssl-check-hostname" in command
    help_text = subprocess.run(
        [sys.executable, "-m", "cached", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--password-file" in help_text and "--password " not in help_text


def test_driver_errors_become_one_line() -> None:
    """What the driver raises for refused credentials and failed handshakes, as the
    one-line ConnectionRejected the CLI prints (shapes seen from cassandra-driver 3.30)."""
    from cassandra import AuthenticationFailed
    from cassandra.cluster import NoHostAvailable

    from cached.store import _rejected

    user = ConnectionSettings.parse(POINTS, username="app", environ={"CASSFS_PASSWORD": "x"})
    anonymous = ConnectionSettings.parse(POINTS, environ=NO_ENV)
    refused = NoHostAvailable("no", {"10.0.0.1:9042": AuthenticationFailed("Bad credentials")})
    assert str(_rejected(user, refused)).startswith(
        "authentication failed for user app at 10.0.0.1:9042,10.0.0.2:9042: check --username"
    )
    assert "requires authentication: give --username" in str(_rejected(anonymous, refused))
    untrusted = OSError(
        1,
        "Tried connecting to [('10.0.0.1', 9042)]. Last error: [SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: self-signed certificate in certificate chain (_ssl.c:1006)",
    )
    line = str(_rejected(anonymous, NoHostAvailable("no", {"10.0.0.1:9042": untrusted})))
    assert line.startswith(
        "TLS handshake with Cassandra at 10.0.0.1:9042,10.0.0.2:9042 failed: certificate "
        "verification failed (self-signed certificate in certificate chain): check --ssl-ca"
    )
    timeout = NoHostAvailable("no", {"10.0.0.1:9042": OSError(110, "timed out")})
    assert _rejected(anonymous, timeout) is None  # unreachable, not refused
