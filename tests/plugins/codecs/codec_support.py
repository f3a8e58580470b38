"""Helpers for the codec plugin tests: Celery's captured messages, test values, and
RSA identities generated at test time (no key is ever committed)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.plugins import load
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from wire_samples import sample

REPO = Path(__file__).resolve().parents[3]


#: What a kombu-JSON-like body holds: the values every serializer must carry.
PLAIN_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**53, -(2**63), 1.5, -0.25, "", "text", "héllo wörld ✓",
    [], {}, [1, "two", 3.0, None, [True, {"k": "v"}]],
    {"a": 1, "b": [1, 2], "c": {"d": None, "e": "é"}},
]
#: A Celery protocol v2 body: [args, kwargs, embed].
TASK_BODY = (
    (2, 2), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
)


def listify(value: Any) -> Any:
    """What a decoder returns for ``value``: tuples become lists, recursively."""
    if isinstance(value, (list, tuple)):
        return [listify(v) for v in value]
    if isinstance(value, dict):
        return {k: listify(v) for k, v in value.items()}
    return value


def sample_body(name: str) -> tuple[bytes, dict[str, Any]]:
    """The exact body bytes of a sample's first message (before transport encoding),
    and its headers + content type as Celery wrote them."""
    message = sample(name)["messages"][0]
    if "envelope" in message:  # Redis: the envelope's body is base64 of the bytes
        env = message["envelope"]
        meta = {"content_type": env["content-type"], "headers": env["headers"]}
        return base64.b64decode(env["body"]), meta
    props = message["properties"]  # AMQP: body_b64 is the body as delivered
    meta = {"content_type": props["content_type"], "headers": props["headers"]}
    return base64.b64decode(message["body_b64"]), meta


def serializer(name: str, app: Any = None) -> Any:
    """A serializer through its entry point, as the core loads it."""
    return load("conveyor.serializers", name)(app)


def compressor(name: str, app: Any = None) -> Any:
    return load("conveyor.compressors", name)(app)


@dataclass
class Identity:
    """An RSA key and a self-signed certificate written as PEM files."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    key_path: Path
    cert_path: Path

    @property
    def signer(self) -> str:
        return " ".join(str(a.value) for a in self.cert.issuer) + f" {self.cert.serial_number}"


_KEYS: list[rsa.RSAPrivateKey] = []


def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    # perf: RSA-2048 generation costs ~50 ms; tests share a few keys per session.
    while len(_KEYS) <= index:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[index]


def make_identity(folder: Path, name: str, *, key: int = 0, serial: int = 4242,
                  cn: str = "conveyor-test", expired: bool = False,
                  password: bytes | None = None) -> Identity:
    """A self-signed RSA identity written to ``folder`` as ``name.key`` / ``name.pem``.
    ``key`` picks one of a few shared keys: equal numbers mean the same key pair."""
    private = _rsa_key(key)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Proto Org"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])
    now = dt.datetime.now(dt.UTC)
    not_after = now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(private.public_key()).serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=60)).not_valid_after(not_after)
        .sign(private, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    key_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(private, cert, key_path, cert_path)


def make_store(folder: Path, *identities: Identity) -> Path:
    """A directory ``folder`` holding the identities' certificates."""
    folder.mkdir(parents=True)
    for ident in identities:
        (folder / ident.cert_path.name).write_bytes(ident.cert_path.read_bytes())
    return folder
