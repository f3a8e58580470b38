"""The ``auth`` serializer: Celery's signed-message format
(docs/architecture.md, "Signed messages").

A body is serialized with an inner serializer (``json`` unless told otherwise), the
serialized bytes are signed with RSASSA-PSS (MGF1, maximum salt length, the
``security_digest`` hash), and everything is packed as::

    base64( base64(signer_id) 00 01 base64(signature) 00 01
            inner_content_type 00 01 inner_content_encoding 00 01 inner_body )

The signature covers the serialized bytes, so a receiver verifies before it parses
anything. Headers and properties are *not* signed, exactly as in Celery.

The inner serializer is another plugin found through ``app.codecs``, never imported:
this package depends on no other serializer distribution.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConfigurationError, ContentDisallowed, SecurityError
from cryptography.hazmat.primitives.asymmetric import padding

from .certificates import CertStore, digest_algorithm, load_certificate, load_private_key

if TYPE_CHECKING:
    from conveyor.interfaces import Serializer

logger = logging.getLogger(__name__)

SEPARATOR = b"\x00\x01"
#: The inner serializer when neither the caller nor the app names one (Celery's too).
DEFAULT_INNER = "json"
#: Names that must never be the inner serializer: the wrapper itself.
_SELF = ("auth", "application/data")


class AuthSerializer:
    """Signs what it writes and refuses what it cannot verify.

    Settings (read from ``app.conf`` unless given as keyword arguments):
    ``security_key`` (PEM RSA private key file), ``security_key_password``,
    ``security_certificate`` (PEM certificate matching the key; its issuer and serial
    name this sender), ``security_cert_store`` (directory or glob of trusted PEM
    certificates) and ``security_digest`` (``sha256``). The inner serializer's name
    comes from ``serializer=``, else the app's ``security_inner_serializer``
    (set by ``app.setup_security(serializer=...)``), else ``json``.

    ``loads`` raises :class:`SecurityError` for an unsigned or malformed body, an
    unknown signer, an expired certificate or a bad signature. The inner body may be
    of the inner serializer's type or of any other type in ``accept_content``.
    """

    content_type = "application/data"
    content_encoding = "utf-8"

    def __init__(self, app: Any = None, *, key: Any = None, key_password: Any = None,
                 certificate: Any = None, cert_store: Any = None, digest: str | None = None,
                 serializer: str | Serializer | None = None) -> None:
        self.app = app
        conf = app.conf if app is not None else {}
        self._key = load_private_key(
            key if key is not None else conf.get("security_key"),
            key_password if key_password is not None else conf.get("security_key_password"),
        )
        self._cert = load_certificate(
            certificate if certificate is not None else conf.get("security_certificate"))
        self._store = CertStore.load(
            cert_store if cert_store is not None else conf.get("security_cert_store"))
        self._digest = digest_algorithm(
            digest if digest is not None else conf.get("security_digest") or "sha256")
        self._check_pair()
        if serializer is None:
            serializer = getattr(app, "security_inner_serializer", None) or DEFAULT_INNER
        if isinstance(serializer, str) and serializer in _SELF:
            raise ConfigurationError(
                "The auth serializer cannot wrap itself; pick the inner serializer "
                "that does the encoding, e.g. setup_security(serializer='json')."
            )
        self._inner_spec = serializer
        self._inner: Serializer | None = None if isinstance(serializer, str) else serializer

    def _check_pair(self) -> None:
        if self._key.public_key().public_numbers() != self._cert.public_key.public_numbers():
            raise ConfigurationError(
                f"security_key does not belong to security_certificate {self._cert.id!r}: "
                "every receiver would reject the signatures. Use the key the "
                "certificate was issued for."
            )
        if self._cert.has_expired():
            logger.warning(
                "security_certificate %r expired on %s: receivers will refuse messages "
                "signed with it. Renew it.", self._cert.id, self._cert.expires.isoformat())

    @property
    def signer(self) -> str:
        """This sender's id on the wire: issuer values and serial of its certificate."""
        return self._cert.id

    # ------------------------------------------------------------------ encode
    def _inner_serializer(self) -> Serializer:
        if self._inner is None:
            if self.app is None:
                raise ConfigurationError(
                    f"The auth serializer was made without an app, so it cannot look "
                    f"up the inner serializer {self._inner_spec!r}; pass a Serializer "
                    "object as serializer=, or create it through app.codecs."
                )
            self._inner = self.app.codecs.serializer(self._inner_spec)
        return self._inner

    def dumps(self, obj: Any) -> bytes:
        inner = self._inner_serializer()
        body = inner.dumps(obj)
        signature = self._key.sign(body, self._padding(), self._digest)
        fields = [
            base64.b64encode(self.signer.encode("utf-8")),
            base64.b64encode(signature),
            inner.content_type.encode("utf-8"),
            inner.content_encoding.encode("utf-8"),
            body,
        ]
        return base64.b64encode(SEPARATOR.join(fields))

    def _padding(self) -> padding.PSS:
        return padding.PSS(mgf=padding.MGF1(self._digest),
                           salt_length=padding.PSS.MAX_LENGTH)

    # ------------------------------------------------------------------ decode
    def loads(self, data: bytes | str) -> Any:
        signer, signature, content_type, body = unpack(data)
        self._store[signer].verify(body, signature, self._digest)
        return self._decoder(content_type).loads(body)

    def _decoder(self, content_type: str) -> Serializer:
        """The serializer for a verified inner body: the inner serializer's type, or
        one the app accepts anyway (accepting it signed adds no risk)."""
        if self._inner is not None and self._inner.content_type == content_type:
            return self._inner
        if self.app is None:
            raise ContentDisallowed(
                f"Signed body of content type {content_type!r} refused: this auth "
                f"serializer only decodes {self._inner_spec!r}."
            )
        allowed = [name for name in self.app.conf.accept_content if name not in _SELF]
        if isinstance(self._inner_spec, str):
            allowed.insert(0, self._inner_spec)
        try:
            found: Serializer = self.app.codecs.decoder(content_type, allowed)
            return found
        except ContentDisallowed as exc:
            raise ContentDisallowed(
                f"Signed body of content type {content_type!r} refused: the auth "
                f"serializer decodes its inner serializer {self._inner_spec!r} and "
                f"what accept_content lists. Use the same setup_security(serializer=...) "
                f"on every peer."
            ) from exc


def unpack(data: bytes | str) -> tuple[str, bytes, str, bytes]:
    """Split a signed body into signer id, signature, inner content type and inner
    body, or raise :class:`SecurityError` if it is not in the signed layout."""
    try:
        raw = base64.b64decode(data, validate=True)
        parts = raw.split(SEPARATOR, 4)
        if len(parts) != 5:
            raise ValueError(f"{len(parts)} fields instead of 5")
        signer = base64.b64decode(parts[0], validate=True).decode("utf-8")
        signature = base64.b64decode(parts[1], validate=True)
        content_type = parts[2].decode("utf-8")
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise SecurityError(
            f"Not a signed message ({exc}): the auth serializer expects Celery's signed "
            "layout. The sender must use serializer='auth' with a key and certificate."
        ) from None
    return signer, signature, content_type, parts[4]


__all__ = ["AuthSerializer", "unpack", "SEPARATOR"]
