"""The ``auth`` serializer: signing, verification, errors, and Celery interop.

Celery's own ``SecureSerializer`` (celery 5.7) is the reference: it must accept what
we sign and we must accept what it signs, with the same key, certificate and store.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from celery.security.certificate import Certificate as CeleryCertificate
from celery.security.certificate import FSCertStore
from celery.security.key import PrivateKey as CeleryPrivateKey
from celery.security.serialization import SecureSerializer
from codec_support import (
    TASK_BODY,
    Identity,
    listify,
    make_identity,
    make_store,
    sample_body,
    serializer,
)
from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError, ContentDisallowed, SecurityError
from conveyor.plugins import load
from conveyor_auth.serializer import SEPARATOR, unpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from wire_samples import sample


def make_app(ident: Identity, store: Path, **settings: object) -> Conveyor:
    conf = {"security_key": str(ident.key_path),
            "security_certificate": str(ident.cert_path),
            "security_cert_store": str(store), **settings}
    return Conveyor("codecs-auth", broker="memory://codecs-auth", **conf)


def celery_serializer(ident: Identity, store: Path, digest: str = "sha256",
                      inner: str = "json") -> SecureSerializer:
    return SecureSerializer(
        CeleryPrivateKey(ident.key_path.read_bytes()),
        CeleryCertificate(ident.cert_path.read_text()),
        FSCertStore(str(store)), digest, serializer=inner,
    )


def repack(fields: list[bytes]) -> bytes:
    return base64.b64encode(SEPARATOR.join(fields))


@pytest.fixture
def alice(tmp_path: Path) -> Identity:
    return make_identity(tmp_path / "ids", "alice", key=0, serial=4242)


@pytest.fixture
def store(tmp_path: Path, alice: Identity) -> Path:
    return make_store(tmp_path / "store", alice)


@pytest.fixture
def auth(alice: Identity, store: Path):
    app = make_app(alice, store)
    app.setup_security()
    return app.codecs.serializer("auth")


# --------------------------------------------------------------------------- format
def test_entry_point_and_wire_properties(auth) -> None:
    assert type(auth) is load("conveyor.serializers", "auth")
    assert (auth.content_type, auth.content_encoding) == ("application/data", "utf-8")


def test_round_trip(auth) -> None:
    data = auth.dumps(TASK_BODY)
    assert auth.loads(data) == listify(TASK_BODY)
    value = {"text": "héllo", "n": [1, 2.5, None, True], "blob": b"\xff"}
    assert auth.loads(auth.dumps(value)) == value


def test_byte_layout_and_pss_max_salt(auth, alice: Identity) -> None:
    data = auth.dumps(TASK_BODY)
    raw = base64.b64decode(data, validate=True)
    signer, signature, ctype, cenc, body = raw.split(SEPARATOR, 4)
    assert base64.b64decode(signer).decode() == alice.signer == "XX Proto Org conveyor-test 4242"
    assert (ctype, cenc) == (b"application/json", b"utf-8")
    assert body == serializer("json").dumps(TASK_BODY)
    sig = base64.b64decode(signature)
    assert len(sig) == 256
    # maximum salt length for RSA-2048/SHA-256 = 256 - 32 - 2 = 222 bytes
    alice.key.public_key().verify(
        sig, body, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=222),
        hashes.SHA256())


def test_unpack_reads_celery_wire_samples() -> None:
    for name in ("redis-auth-json", "amqp-auth-json"):
        body, meta = sample_body(name)
        assert meta["content_type"] == "application/data"
        expected = sample(name)["messages"][0]["body"]["auth"]
        signer, signature, ctype, inner = unpack(body)
        assert signer == expected["signer"] == "XX Proto Org conveyor-capture 4242"
        assert base64.b64encode(signature).decode() == expected["signature_b64"]
        assert ctype == expected["inner_content_type"] == "application/json"
        assert inner.decode() == expected["inner_body_text"]


def test_celery_sample_is_refused_without_its_certificate(auth) -> None:
    body, _ = sample_body("redis-auth-json")
    with pytest.raises(SecurityError, match="Unknown signer 'XX Proto Org conveyor-capture"):
        auth.loads(body)


# --------------------------------------------------------------------------- refusals
def test_tampered_body_is_refused(auth) -> None:
    fields = base64.b64decode(auth.dumps(TASK_BODY)).split(SEPARATOR, 4)
    fields[4] = fields[4].replace(b"[2, 2]", b"[2, 3]")
    with pytest.raises(SecurityError, match="Bad signature"):
        auth.loads(repack(fields))


def test_tampered_signature_is_refused(auth) -> None:
    fields = base64.b64decode(auth.dumps(TASK_BODY)).split(SEPARATOR, 4)
    sig = bytearray(base64.b64decode(fields[1]))
    sig[10] ^= 0x01
    fields[1] = base64.b64encode(bytes(sig))
    with pytest.raises(SecurityError, match="Bad signature"):
        auth.loads(repack(fields))


@pytest.mark.parametrize("data", [
    b'[[2, 2], {}, {"callbacks": null}]',       # plain JSON: never signed
    base64.b64encode(b"no separators here"),
    base64.b64encode(b"bad\x00\x01b64!\x00\x01x\x00\x01y\x00\x01body"),
    b"",
])
def test_unsigned_or_malformed_message_is_refused(auth, data: bytes) -> None:
    with pytest.raises(SecurityError, match="Not a signed message"):
        auth.loads(data)


def test_signer_not_in_store_is_refused(tmp_path: Path, auth) -> None:
    mallory = make_identity(tmp_path / "ids", "mallory", key=1, serial=666, cn="mallory")
    sender = make_app(mallory, make_store(tmp_path / "mstore", mallory))
    sender.setup_security()
    with pytest.raises(SecurityError, match="Unknown signer 'XX Proto Org mallory 666'"):
        auth.loads(sender.codecs.serializer("auth").dumps(TASK_BODY))


def test_wrong_key_claiming_a_trusted_signer_is_refused(tmp_path: Path, auth,
                                                         alice: Identity) -> None:
    # Same issuer names and serial as alice (so the same signer id), another key.
    impostor = make_identity(tmp_path / "ids", "impostor", key=1, serial=4242)
    assert impostor.signer == alice.signer
    sender = make_app(impostor, make_store(tmp_path / "istore", impostor))
    sender.setup_security()
    with pytest.raises(SecurityError, match="Bad signature"):
        auth.loads(sender.codecs.serializer("auth").dumps(TASK_BODY))


def test_expired_certificate_is_refused(tmp_path: Path, caplog) -> None:
    old = make_identity(tmp_path / "ids", "old", key=0, serial=7, expired=True)
    app = make_app(old, make_store(tmp_path / "ostore", old))
    with caplog.at_level(logging.WARNING, logger="conveyor_auth"):
        app.setup_security()
    assert "expired" in caplog.text
    auth = app.codecs.serializer("auth")
    with pytest.raises(SecurityError, match="expired"):
        auth.loads(auth.dumps(TASK_BODY))


def test_inner_type_outside_accept_content_is_refused(alice: Identity, store: Path,
                                                       auth) -> None:
    # Signed by a trusted peer, but pickle: accepting it would run pickle.loads.
    signed = celery_serializer(alice, store, inner="pickle").serialize(TASK_BODY)
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        auth.loads(signed.encode())


def test_refusals_reach_the_codec_registry_as_security_errors(alice: Identity,
                                                              store: Path) -> None:
    app = make_app(alice, store)
    app.setup_security()
    with pytest.raises(SecurityError):
        app.codecs.loads(b"[[], {}, {}]", "application/data", None, ["auth"])


# --------------------------------------------------------------------------- settings
def test_missing_settings_name_the_setting(tmp_path: Path, alice: Identity,
                                           store: Path) -> None:
    for missing in ("security_key", "security_certificate", "security_cert_store"):
        app = make_app(alice, store)
        app.conf[missing] = None
        with pytest.raises(ConfigurationError, match=f"{missing} is not set"):
            app.setup_security()


@pytest.mark.parametrize("setting", ["security_key", "security_certificate"])
def test_unreadable_file_names_setting_and_path(tmp_path: Path, alice: Identity,
                                                store: Path, setting: str) -> None:
    app = make_app(alice, store)
    missing = tmp_path / "nowhere" / "file.pem"
    app.conf[setting] = str(missing)
    with pytest.raises(ConfigurationError, match=setting) as info:
        app.setup_security()
    assert str(missing) in str(info.value)


def test_empty_or_bad_store_names_the_path(tmp_path: Path, alice: Identity) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match="security_cert_store .*holds no"):
        make_app(alice, empty).setup_security()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="readme.txt"):
        make_app(alice, junk).setup_security()


def test_store_may_be_a_glob(tmp_path: Path, alice: Identity, store: Path) -> None:
    app = make_app(alice, store, security_cert_store=str(store / "*.pem"))
    app.setup_security()
    auth = app.codecs.serializer("auth")
    assert auth.loads(auth.dumps([1])) == [1]


def test_key_that_does_not_match_certificate_is_a_configuration_error(
        tmp_path: Path, alice: Identity, store: Path) -> None:
    other = make_identity(tmp_path / "ids", "other", key=1, serial=9)
    app = make_app(alice, store, security_key=str(other.key_path))
    with pytest.raises(ConfigurationError, match="does not belong to security_certificate"):
        app.setup_security()


def test_encrypted_key_needs_its_password(tmp_path: Path, store: Path) -> None:
    locked = make_identity(tmp_path / "ids", "locked", key=0, password=b"s3cret")
    app = make_app(locked, store, security_key_password="s3cret")
    app.setup_security()
    auth = app.codecs.serializer("auth")
    assert auth.loads(auth.dumps([1])) == [1]
    wrong = make_app(locked, store, security_key_password="nope")
    with pytest.raises(ConfigurationError, match="security_key .*security_key_password"):
        wrong.setup_security()


def test_unknown_digest_is_a_configuration_error(alice: Identity, store: Path) -> None:
    with pytest.raises(ConfigurationError, match="security_digest 'sha9000'"):
        make_app(alice, store, security_digest="sha9000").setup_security()


def test_setup_security_switches_the_app(alice: Identity, store: Path) -> None:
    app = make_app(alice, store)
    app.setup_security(serializer="msgpack")
    assert app.conf.task_serializer == "auth"
    assert app.conf.accept_content == ["auth"]
    auth = app.codecs.serializer("auth")
    _, _, ctype, _ = unpack(auth.dumps(TASK_BODY))
    assert ctype == "application/x-msgpack"
    assert auth.loads(auth.dumps(TASK_BODY)) == listify(TASK_BODY)


def test_without_an_app_the_inner_serializer_is_given(alice: Identity, store: Path) -> None:
    from conveyor_auth import AuthSerializer
    auth = AuthSerializer(None, key=alice.key_path, certificate=alice.cert_path,
                          cert_store=store, serializer=serializer("json"))
    assert auth.loads(auth.dumps(TASK_BODY)) == listify(TASK_BODY)
    bare = AuthSerializer(None, key=alice.key_path, certificate=alice.cert_path,
                          cert_store=store)
    with pytest.raises(ConfigurationError, match="without an app"):
        bare.dumps([1])


# --------------------------------------------------------------------------- Celery
@pytest.mark.parametrize("digest", ["sha256", "sha512"])
def test_celery_accepts_ours_and_we_accept_celerys(alice: Identity, store: Path,
                                                   digest: str) -> None:
    app = make_app(alice, store, security_digest=digest)
    app.setup_security()
    ours = app.codecs.serializer("auth")
    celery = celery_serializer(alice, store, digest)
    assert listify(celery.deserialize(ours.dumps(TASK_BODY))) == listify(TASK_BODY)
    signed = celery.serialize(TASK_BODY)
    assert isinstance(signed, str)
    assert ours.loads(signed.encode("utf-8")) == listify(TASK_BODY)
    assert ours.loads(signed) == listify(TASK_BODY)


def test_celery_msgpack_inner_serializer_interop(alice: Identity, store: Path) -> None:
    app = make_app(alice, store)
    app.setup_security(serializer="msgpack")
    ours = app.codecs.serializer("auth")
    celery = celery_serializer(alice, store, inner="msgpack")
    assert listify(celery.deserialize(ours.dumps(TASK_BODY))) == listify(TASK_BODY)
    assert ours.loads(celery.serialize(TASK_BODY).encode()) == listify(TASK_BODY)


def test_celery_refuses_our_tampered_body(alice: Identity, store: Path, auth) -> None:
    from celery.exceptions import SecurityError as CelerySecurityError
    fields = base64.b64decode(auth.dumps(TASK_BODY)).split(SEPARATOR, 4)
    fields[4] = fields[4].replace(b"[2, 2]", b"[9, 9]")
    with pytest.raises(CelerySecurityError):
        celery_serializer(alice, store).deserialize(repack(fields))


def test_every_message_is_signed_for_itself_even_without_arguments(
        alice: Identity, store: Path) -> None:
    """Two calls without arguments carry two signatures (PSS is salted): a body is
    never reused from an earlier message, so a rotated key or an expired certificate
    takes effect on the next message."""
    app = make_app(alice, store)
    app.setup_security()
    bodies = [app.prepare("proj.bare", (), {}, {}, {}, None)[0].body for _ in range(3)]
    assert len(set(bodies)) == 3
    auth = app.codecs.serializer("auth")
    for body in bodies:
        assert auth.loads(body)[:2] == [[], {}]
