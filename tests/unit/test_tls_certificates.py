"""sagaz.tls: the cluster CA and the server certificate (created, kept, renewed, validated)."""

from __future__ import annotations

import ssl
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from sagaz.errors import ConfigurationError
from sagaz.tls import (
    RENEW_BEFORE,
    SERVER_LIFETIME,
    certificate_names,
    ensure_certificates,
    load_tls_dir,
)

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
NAMES = ["127.0.0.1", "127.0.0.2", "localhost", "pgbouncer-rw"]


def _at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_ca_and_server_certificate_with_private_modes(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    assert _mode(files.directory) == 0o700
    assert _mode(files.ca_key) == 0o600
    assert _mode(files.server_key) == 0o600
    assert sorted(certificate_names(files.server_cert)) == sorted(NAMES)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    assert server.not_valid_after_utc - NOW <= SERVER_LIFETIME
    assert files.client_params() == {"sslmode": "verify-full",
                                     "sslrootcert": str(files.ca_cert)}


def test_openssl_verifies_the_chain_and_host_names(tmp_path: Path) -> None:
    """What libpq's verify-full does: the chain to the CA and the host name (IP SAN, DNS SAN)."""
    files = ensure_certificates(tmp_path / "tls", NAMES)  # real clock: OpenSSL checks dates
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(files.server_cert), str(files.server_key))
    for host in ("127.0.0.2", "pgbouncer-rw"):
        client_obj, server_obj = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(client_obj, server_obj, server_hostname=host)
        srv = server.wrap_bio(server_obj, client_obj, server_side=True)
        _handshake(client, srv)
    wrong = ssl.create_default_context(cafile=str(files.ca_cert))
    client_obj, server_obj = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = wrong.wrap_bio(client_obj, server_obj, server_hostname="127.0.0.9")
    srv = server.wrap_bio(server_obj, client_obj, server_side=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client, srv)


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject) -> None:
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def test_second_run_keeps_the_certificates(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    before = {p: p.read_bytes() for p in (files.ca_cert, files.ca_key, files.server_cert,
                                          files.server_key)}
    ensure_certificates(tmp_path / "tls", NAMES[:2], clock=_at(NOW + timedelta(days=100)))
    assert {p: p.read_bytes() for p in before} == before


def test_server_certificate_renewed_before_it_expires_ca_kept(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    ca, server = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    late = NOW + SERVER_LIFETIME - RENEW_BEFORE + timedelta(days=1)
    ensure_certificates(tmp_path / "tls", NAMES, clock=_at(late))
    assert files.ca_cert.read_bytes() == ca
    assert files.server_cert.read_bytes() != server
    renewed = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert renewed.not_valid_after_utc > late + RENEW_BEFORE


def test_new_name_reissues_the_server_certificate(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    ca = files.ca_cert.read_bytes()
    ensure_certificates(tmp_path / "tls", [*NAMES, "127.0.0.3"], clock=_at(NOW))
    assert files.ca_cert.read_bytes() == ca
    assert "127.0.0.3" in certificate_names(files.server_cert)


def test_damaged_files_are_replaced(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    files.ca_key.write_text("garbage")
    ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(files.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_bring_your_own_directory_validated(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls", NAMES, clock=_at(NOW))
    assert load_tls_dir(files.directory, ["pgbouncer-rw"], clock=_at(NOW)) == files
    with pytest.raises(ConfigurationError, match="no subjectAltName for postgres-primary"):
        load_tls_dir(files.directory, ["postgres-primary"], clock=_at(NOW))
    with pytest.raises(ConfigurationError, match="not valid now"):
        load_tls_dir(files.directory, [], clock=_at(NOW + timedelta(days=5000)))
    other = ensure_certificates(tmp_path / "other", NAMES, clock=_at(NOW))
    other.ca_cert.replace(files.ca_cert)
    with pytest.raises(ConfigurationError, match="is not signed by"):
        load_tls_dir(files.directory, [], clock=_at(NOW))
    files.server_key.write_text("not a key")
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM private key"):
        load_tls_dir(files.directory, [], clock=_at(NOW))
    files.server_cert.unlink()
    with pytest.raises(ConfigurationError, match=r"server\.crt is missing"):
        load_tls_dir(files.directory, [], clock=_at(NOW))
