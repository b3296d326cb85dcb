"""The certificates of TLS: a cluster CA and one server certificate signed by it, for the local
cluster (``sagaz dev up``) and the generated deployments (``sagaz init``) alike.

No database driver here: ``sagaz init`` imports this module, and deployments must not need one.
Everything cryptographic is done by the ``cryptography`` library (keys, signatures, X.509).

A TLS directory holds::

    ca.crt       the cluster CA (self-signed, 10 years): clients verify servers against it
    ca.key       its private key (0600): signs the server certificate; not needed by servers
    server.crt   the certificate of every server and pool of the cluster, signed by the CA, with a
                 subjectAltName for each address and host name they are reached at (verify-full)
    server.key   its private key (0600)

The directory is 0700. :func:`ensure_certificates` is idempotent: it keeps what is there while it
is valid (parseable, the server certificate signed by the CA, covering the names asked for, not
expiring within :data:`RENEW_BEFORE`) and makes new certificates otherwise, so ``sagaz dev up``
can call it on every run.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sagaz.errors import ConfigurationError

__all__ = ["CA_LIFETIME", "RENEW_BEFORE", "SERVER_LIFETIME", "TlsFiles", "certificate_names",
           "missing_names",
           "ensure_certificates", "load_tls_dir"]

CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=825)
"""Browsers' historical maximum; the server certificate is renewed long before, by
:func:`ensure_certificates`, on the next ``sagaz dev up`` / ``sagaz init --force``."""
RENEW_BEFORE = timedelta(days=30)
"""A certificate that expires within this is replaced (an idempotent run renews it in time)."""

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TlsFiles:
    """The files of a TLS directory (see the module docstring)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def client_params(self) -> dict[str, str]:
        """libpq parameters of a client that verifies the server: the certificate must be signed
        by the cluster CA and name the host connected to (no man in the middle)."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.ca_cert)}


def ensure_certificates(directory: Path, names: Sequence[str], *,
                        clock: Clock = _utc_now) -> TlsFiles:
    """The CA and server certificate of ``directory`` for ``names`` (IP addresses and host
    names), created or renewed when missing, unreadable, not covering ``names``, or expiring
    within :data:`RENEW_BEFORE`; left alone otherwise."""
    files = TlsFiles(directory)
    now = clock()
    _private_directory(directory)
    ca = _load_valid(files.ca_cert, now)
    ca_key = _load_key(files.ca_key)
    if ca is None or ca_key is None or ca.public_key() != ca_key.public_key():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue_ca(ca_key, now)
        _write(files.ca_key, _key_pem(ca_key), 0o600)
        _write(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    server = _load_valid(files.server_cert, now)
    server_key = _load_key(files.server_key)
    if (server is None or server_key is None or server.public_key() != server_key.public_key()
            or not _signed_by(server, ca) or missing_names(server, names)):
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _issue_server(server_key, ca, ca_key, names, now)
        _write(files.server_key, _key_pem(server_key), 0o600)
        _write(files.server_cert, server.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def load_tls_dir(directory: Path, names: Sequence[str], *, clock: Clock = _utc_now) -> TlsFiles:
    """Certificates brought by the user (``sagaz init --tls-dir``): ca.crt, server.crt and
    server.key present and parseable, the key that of the certificate, the certificate signed by
    the CA, valid now and naming every host in ``names``. A one-line ConfigurationError
    otherwise (ca.key is not needed)."""
    files = TlsFiles(directory)
    hint = (f"--tls-dir {directory} must hold ca.crt, server.crt and server.key (PEM, key "
            "unencrypted)")
    for path in (files.ca_cert, files.server_cert, files.server_key):
        if not path.is_file():
            raise ConfigurationError(f"{path} is missing: {hint}")
    ca = _parse_cert(files.ca_cert, hint)
    server = _parse_cert(files.server_cert, hint)
    try:
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"{files.server_key} is not an unencrypted PEM private key ({exc}): {hint}") from None
    if key.public_key() != server.public_key():
        raise ConfigurationError(f"{files.server_key} is not the key of {files.server_cert}")
    if not _signed_by(server, ca):
        raise ConfigurationError(f"{files.server_cert} is not signed by {files.ca_cert}")
    now = clock()
    for path, cert in ((files.ca_cert, ca), (files.server_cert, server)):
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise ConfigurationError(
                f"{path} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d})")
    missing = missing_names(server, names)
    if missing:
        raise ConfigurationError(
            f"{files.server_cert} has no subjectAltName for {', '.join(missing)}: clients "
            "verify the host name (sslmode=verify-full), add them to the certificate")
    return files


def certificate_names(cert_path: Path) -> list[str]:
    """The subjectAltNames (DNS names and IP addresses) of a PEM certificate."""
    return _san_names(x509.load_pem_x509_certificate(cert_path.read_bytes()))


def missing_names(cert: x509.Certificate, names: Sequence[str]) -> list[str]:
    """The names of ``names`` that ``cert``'s subjectAltName does not list."""
    present = set(_san_names(cert))
    return [n for n in names if _normalize(n) not in present]


# -- issuing ------------------------------------------------------------------------------------

def _issue_ca(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sagaz cluster CA")])
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))


def _issue_server(key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                  ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str],
                  now: datetime) -> x509.Certificate:
    if not names:
        raise ConfigurationError("a server certificate needs at least one host name or address")
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(_normalize(n) for n in names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _normalize(names[0]))])
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(min(now + SERVER_LIFETIME, ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            # clientAuth too: etcd members present it to each other (peer TLS) and Patroni to
            # etcd, which require a certificate of the cluster CA from their clients.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


# -- reading ------------------------------------------------------------------------------------

def _load_valid(path: Path, now: datetime) -> x509.Certificate | None:
    """The certificate at ``path`` if it parses and stays valid beyond :data:`RENEW_BEFORE`."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not cert.not_valid_before_utc <= now or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return cert


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _parse_cert(path: Path, hint: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not a PEM certificate ({exc}): {hint}") from None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _normalize(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


# -- files --------------------------------------------------------------------------------------

def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _private_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the start (a key is never readable by others, not
    even for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.chmod(mode)
    os.replace(tmp, path)
