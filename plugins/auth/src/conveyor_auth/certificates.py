"""Loading the signing key, the certificate and the certificate store from PEM files.

Every problem with a file becomes a :class:`~conveyor.exceptions.ConfigurationError`
naming the setting and the path, raised when the serializer is created, so a
misconfigured worker fails at start instead of rejecting every message later.
Problems with a *message* (unknown signer, expired certificate, bad signature) are
:class:`~conveyor.exceptions.SecurityError`, raised by :meth:`Certificate.verify`.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
from collections.abc import Iterator
from typing import Any

from conveyor.exceptions import ConfigurationError, SecurityError
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def not_set(setting: str, what: str) -> ConfigurationError:
    """The error for a security setting left empty."""
    return ConfigurationError(
        f"{setting} is not set: the auth serializer needs {what}. Set "
        f"app.conf.{setting} to its path (see setup_security())."
    )


def read_file(path: Any, setting: str, what: str) -> bytes:
    """The bytes of the file a setting names; a clear error when unset or unreadable."""
    if not path:
        raise not_set(setting, what)
    try:
        with open(os.fspath(path), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read {setting} {os.fspath(path)!r} ({what}): "
            f"{exc.strerror or exc}. Fix the path or the file's permissions."
        ) from exc


def digest_algorithm(name: str) -> hashes.HashAlgorithm:
    """``security_digest`` as a hash: the upper-cased name of a cryptography hash class,
    as Celery maps it (``sha256`` → ``SHA256``)."""
    cls = getattr(hashes, str(name).upper(), None)
    if not (isinstance(cls, type) and issubclass(cls, hashes.HashAlgorithm)):
        raise ConfigurationError(
            f"security_digest {name!r} is not a known hash. Use the name every peer "
            "uses, e.g. 'sha256' (Celery's default), 'sha384' or 'sha512'."
        )
    return cls()


def load_private_key(path: Any, password: Any = None) -> rsa.RSAPrivateKey:
    """The RSA private key of ``security_key`` (``security_key_password`` if encrypted)."""
    data = read_file(path, "security_key", "the PEM private key that signs messages")
    if isinstance(password, str):
        password = password.encode("utf-8")
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"security_key {os.fspath(path)!r} is not a readable PEM private key: {exc}. "
            "Check the file, and set security_key_password if the key is encrypted."
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError(
            f"security_key {os.fspath(path)!r} holds a {type(key).__name__}; only RSA "
            "keys are supported (Celery signs with RSASSA-PSS)."
        )
    return key


def _parse_certificates(data: bytes, setting: str, path: str) -> list[Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigurationError(
            f"{setting} {path!r} is not a PEM X.509 certificate: {exc}. Point it at "
            "a file of '-----BEGIN CERTIFICATE-----' blocks."
        ) from exc
    certs = []
    for cert in found:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigurationError(
                f"{setting} {path!r}: certificate {signer_id(cert)!r} has a "
                f"{type(key).__name__}; only RSA certificates are supported."
            )
        certs.append(Certificate(cert, key))
    return certs


def load_certificate(path: Any) -> Certificate:
    """The certificate of ``security_certificate`` (the first one in the file)."""
    data = read_file(path, "security_certificate",
                     "the PEM certificate that names this sender")
    return _parse_certificates(data, "security_certificate", os.fspath(path))[0]


def signer_id(cert: x509.Certificate) -> str:
    """How Celery names a certificate on the wire: the issuer's attribute values in
    RDN order joined by spaces, a space, the decimal serial (docs/architecture.md,
    "Signed messages")."""
    issuer = " ".join(str(attr.value) for attr in cert.issuer)
    return f"{issuer} {cert.serial_number}"


class Certificate:
    """An X.509 certificate with an RSA public key and its signer id."""

    def __init__(self, cert: x509.Certificate, public_key: rsa.RSAPublicKey) -> None:
        self.cert = cert
        self.public_key = public_key
        self.id = signer_id(cert)

    @property
    def expires(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def has_expired(self) -> bool:
        return dt.datetime.now(dt.UTC) >= self.expires

    def verify(self, body: bytes, signature: bytes, digest: hashes.HashAlgorithm) -> None:
        """Raise :class:`SecurityError` unless ``signature`` signs ``body`` and the
        certificate is still valid. Any PSS salt length is accepted, as Celery does."""
        if self.has_expired():
            raise SecurityError(
                f"Certificate {self.id!r} expired on {self.expires.isoformat()}; "
                "messages it signs are refused. The sender needs a renewed "
                "certificate, and every receiver's security_cert_store the new one."
            )
        pad = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO)
        try:
            self.public_key.verify(signature, body, pad, digest)
        except InvalidSignature:
            raise SecurityError(
                f"Bad signature from {self.id!r}: the body was changed after it was "
                "signed, or signed with a key that does not match this certificate, "
                "or with another security_digest."
            ) from None


class CertStore:
    """The trusted certificates of ``security_cert_store``, keyed by signer id.

    An expired certificate is kept rather than refused at load (Celery refuses the
    whole store), so one stale file does not stop a worker: messages it signed are
    refused with an "expired" :class:`SecurityError` instead.
    """

    def __init__(self, certs: dict[str, Certificate], location: str) -> None:
        self.certs = certs
        self.location = location

    @classmethod
    def load(cls, location: Any) -> CertStore:
        """Every certificate in a directory, or in the files a glob pattern matches."""
        if not location:
            raise not_set("security_cert_store",
                          "a directory or glob of the PEM certificates it trusts")
        location = os.fspath(location)
        pattern = os.path.join(location, "*") if os.path.isdir(location) else location
        paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not paths:
            raise ConfigurationError(
                f"security_cert_store {location!r} holds no certificate file. Set it "
                "to a directory of PEM certificates or a glob such as '/etc/certs/*.pem'."
            )
        certs: dict[str, Certificate] = {}
        origin: dict[str, str] = {}
        for path in paths:
            data = read_file(path, "security_cert_store", "a trusted PEM certificate")
            for cert in _parse_certificates(data, "security_cert_store", path):
                known = certs.get(cert.id)
                if known is not None and known.cert != cert.cert:
                    raise ConfigurationError(
                        f"security_cert_store: {origin[cert.id]!r} and {path!r} hold "
                        f"different certificates with the same signer id {cert.id!r} "
                        "(issuer and serial); remove one."
                    )
                certs[cert.id] = cert
                origin[cert.id] = path
        return cls(certs, location)

    def __getitem__(self, signer: str) -> Certificate:
        try:
            return self.certs[signer]
        except KeyError:
            raise SecurityError(
                f"Unknown signer {signer!r}: no certificate with that issuer and serial "
                f"in security_cert_store {self.location!r}. Add the sender's "
                "certificate to the store if it is trusted."
            ) from None

    def __iter__(self) -> Iterator[Certificate]:
        return iter(self.certs.values())

    def __len__(self) -> int:
        return len(self.certs)
