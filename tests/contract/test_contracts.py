"""Every installed plugin of every kind against the contract kit.

Serializers and compressors are parametrized by their entry-point names, so a new
plugin is tested without anyone remembering to add it. Transports and backends need
a URL each, given here per scheme.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conveyor_pytest.contract import (
    BackendContract, CompressorContract, SerializerContract, TransportContract,
)
from conveyor_pytest.fixtures import require_service

from conveyor import Conveyor
from conveyor.plugins import find

SERIALIZERS = sorted({p.name for p in find("conveyor.serializers")} - {"auth"})
COMPRESSORS = sorted({p.name for p in find("conveyor.compressors")})


def _signing_app(tmp_path: Path) -> Conveyor:
    """An app with a throwaway key and certificate, for the ``auth`` serializer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "contract")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(4242)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    app = Conveyor("contract-auth", broker="memory://contract-auth")
    app.setup_security(security_key=str(tmp_path / "key.pem"),
                       security_certificate=str(tmp_path / "cert.pem"),
                       security_cert_store=str(tmp_path / "cert.pem"))
    return app


class TestSerializers(SerializerContract):
    @pytest.fixture(params=SERIALIZERS + ["auth"])
    def serializer(self, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        if request.param == "auth":
            return _signing_app(tmp_path).codecs.serializer("auth")
        return Conveyor("contract", broker="memory://c").codecs.serializer(request.param)


class TestCompressors(CompressorContract):
    @pytest.fixture(params=COMPRESSORS)
    def compressor(self, request: pytest.FixtureRequest) -> Any:
        return Conveyor("contract", broker="memory://c").codecs.compressor(request.param)


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


class TestSqliteTransport(TransportContract):
    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.sqlite3'}"


REDIS_PORT = int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
REDIS_URL = os.environ.get("CONVEYOR_CONTRACT_REDIS", f"redis://127.0.0.1:{REDIS_PORT}/14")


@pytest.fixture
def redis_contract_url() -> Iterator[str]:
    """The contract's own Redis db, emptied afterwards (bindings, dead letters…)."""
    require_service("Redis", "127.0.0.1", REDIS_PORT)
    yield REDIS_URL
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


class TestRedisTransport(TransportContract):
    @pytest.fixture
    def broker_url(self, redis_contract_url: str) -> str:
        return redis_contract_url


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


class TestSqliteBackend(BackendContract):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.sqlite3'}"


class TestRedisBackend(BackendContract):
    @pytest.fixture
    def backend_url(self, redis_contract_url: str) -> str:
        return redis_contract_url
