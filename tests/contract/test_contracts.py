"""Every installed plugin of every kind against the contract kit.

Serializers and compressors are parametrized by their entry-point names, so a new
plugin is tested without anyone remembering to add it. Transports and backends need
a URL each, given here per scheme, and so do their asyncio twins; a transport or
backend entry point (blocking or asyncio) that no class here covers fails
``test_every_installed_transport_and_backend_has_a_contract_class``.
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
    AsyncBackendContract, AsyncDelayContract, AsyncJoinContract, AsyncPriorityContract,
    AsyncReplyContract, AsyncTransportContract, BackendContract, BroadcastContract,
    CompressorContract, DeadLetterContract, DelayContract, FetchAheadContract,
    FullTransportContract, GroupContract, HeartbeatContract, InspectContract, JoinContract, LeaseContract, PriorityContract,
    PurgeContract, ReplyContract, SerializerContract, TransportContract,
)
from conveyor_pytest.fixtures import require_service
from rabbit_vhosts import own_vhost, url_for

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


class TestMemoryTransport(TransportContract, PriorityContract, DelayContract,
                          LeaseContract, DeadLetterContract, PurgeContract,
                          InspectContract, BroadcastContract):
    """Everything but ``abandon``: closing an in-process broker gives nothing back."""

    covers = ("memory",)

    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


class TestSqliteTransport(FullTransportContract):
    covers = ("sqlite",)

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


class TestRedisTransport(FullTransportContract, FetchAheadContract):
    # rediss:// is the same class over TLS (SecureRedisTransport changes the scheme only)
    covers = ("redis", "rediss")

    @pytest.fixture
    def broker_url(self, redis_contract_url: str) -> str:
        return redis_contract_url


class _KombuBridge(TransportContract, DeadLetterContract, PurgeContract, InspectContract,
                   BroadcastContract):
    """The kombu bridge (conveyor-kombu): what it declares on every kombu transport."""

    covers = ("kombu",)

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
        return {"polling_interval": 0.01}


class TestKombuMemoryTransport(_KombuBridge):
    @pytest.fixture
    def broker_url(self) -> str:
        return "kombu+memory://"


class TestKombuFilesystemTransport(_KombuBridge):
    @pytest.fixture
    def broker_url(self) -> str:
        return "kombu+filesystem://"

    @pytest.fixture
    def transport_options(self, tmp_path: Path) -> dict[str, Any]:
        return {"polling_interval": 0.01, "data_folder_in": str(tmp_path),
                "data_folder_out": str(tmp_path), "control_folder": str(tmp_path)}

    def test_a_batch_arrives_whole_and_in_order(self, transport: Any, queue: str) -> None:
        """kombu names each message file by the millisecond it was written (and a
        random id), so messages written within one millisecond come in any order:
        the whole batch arrives, ordered only to the millisecond."""
        self.send(transport, queue, *(self.message(n) for n in range(25)))
        assert sorted(self.ids(self.drain(transport, queue, 25))) == list(range(25))


class TestKombuRedisTransport(_KombuBridge, PriorityContract):
    """kombu's Redis transport orders by priority, so the bridge declares it there."""

    @pytest.fixture
    def broker_url(self, redis_contract_url: str) -> str:
        return "kombu+" + redis_contract_url


class TestMemoryBackend(BackendContract, JoinContract, GroupContract):
    covers = ("memory",)

    @pytest.fixture
    def backend_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


class TestSqliteBackend(BackendContract, JoinContract, GroupContract):
    covers = ("sqlite",)

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.sqlite3'}"


class TestRedisBackend(BackendContract, JoinContract, GroupContract):
    covers = ("redis", "rediss")

    @pytest.fixture
    def backend_url(self, redis_contract_url: str) -> str:
        return redis_contract_url


@pytest.fixture(scope="module")
def amqp_contract_url() -> Iterator[str]:
    """A RabbitMQ vhost of the contract's own, deleted afterwards."""
    with own_vhost("conveyor-contract") as vhost:
        yield url_for(vhost)


class _Amqp:
    """The contract's RabbitMQ vhost, with publisher confirms (``purge`` right after a
    one-way publish may not see it yet: RabbitMQ routes it asynchronously), queues
    declared with x-max-priority (``task_queue_max_priority``, as with Celery)."""

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
        return {"confirm_publish": True}

    @pytest.fixture
    def app(self, broker_url: str, transport_options: dict[str, Any]) -> Iterator[Conveyor]:
        app = Conveyor(f"contract-{uuid.uuid4().hex[:6]}", broker=broker_url,
                       backend="memory://contract", task_queue_max_priority=10,
                       broker_transport_options=transport_options)
        yield app
        app.close()

    @pytest.fixture
    def broker_url(self, amqp_contract_url: str) -> str:
        return amqp_contract_url


@pytest.mark.amqp
class TestAmqpTransport(_Amqp, TransportContract, PriorityContract, DelayContract,
                        DeadLetterContract, PurgeContract, InspectContract,
                        HeartbeatContract, BroadcastContract):
    """Channel settlement; no leases (RabbitMQ holds a delivery while its channel
    lives) and no abandon (a lost channel's deliveries come back by themselves).
    amqps:// is the same class over TLS. ``inspect`` counts what AMQP can count:
    ready (not by priority) and dead letters per queue, the delay layout's parked
    messages for all queues together, no leased."""

    covers = ("amqp", "amqps")


@pytest.mark.amqp
class TestRpcBackend(BackendContract, ReplyContract):
    """Results sent to this process's own reply queue (a store without a request's
    ``reply_to`` goes there) and to another's, on the contract's RabbitMQ vhost."""

    covers = ("rpc",)

    @pytest.fixture
    def backend_broker(self, amqp_contract_url: str) -> str:
        return amqp_contract_url

    @pytest.fixture
    def backend_url(self) -> str:
        return "rpc://"


# ------------------------------------------------------------------ asyncio twins
class TestMemoryAsyncTransport(AsyncTransportContract, AsyncPriorityContract,
                               AsyncDelayContract):
    covers = ("memory",)

    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


class TestSqliteAsyncTransport(AsyncTransportContract, AsyncPriorityContract,
                               AsyncDelayContract):
    covers = ("sqlite",)

    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.sqlite3'}"


class TestRedisAsyncTransport(AsyncTransportContract, AsyncPriorityContract,
                              AsyncDelayContract):
    covers = ("redis", "rediss")

    @pytest.fixture
    def broker_url(self, redis_contract_url: str) -> str:
        return redis_contract_url


@pytest.mark.amqp
class TestAmqpAsyncTransport(_Amqp, AsyncTransportContract, AsyncPriorityContract,
                             AsyncDelayContract):
    covers = ("amqp", "amqps")


class TestMemoryAsyncBackend(AsyncBackendContract):
    """No joins on the twin: an asyncio chord on memory:// says so (AsyncUnsupportedError)."""

    covers = ("memory",)

    @pytest.fixture
    def backend_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


class TestSqliteAsyncBackend(AsyncBackendContract, AsyncJoinContract):
    covers = ("sqlite",)

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.sqlite3'}"


class TestRedisAsyncBackend(AsyncBackendContract, AsyncJoinContract):
    covers = ("redis", "rediss")

    @pytest.fixture
    def backend_url(self, redis_contract_url: str) -> str:
        return redis_contract_url


@pytest.mark.amqp
class TestRpcAsyncBackend(AsyncBackendContract, AsyncReplyContract):
    covers = ("rpc",)

    @pytest.fixture
    def backend_broker(self, amqp_contract_url: str) -> str:
        return amqp_contract_url

    @pytest.fixture
    def backend_url(self) -> str:
        return "rpc://"


GROUPS = [("conveyor.transports", TransportContract), ("conveyor.backends", BackendContract),
          ("conveyor.async_transports", AsyncTransportContract),
          ("conveyor.async_backends", AsyncBackendContract)]


def _covered(kind: type) -> set[str]:
    found: set[str] = set()
    for cls in list(globals().values()):
        if isinstance(cls, type) and issubclass(cls, kind) and cls.__name__.startswith("Test"):
            found.update(cls.covers)
    return found


@pytest.mark.parametrize(("group", "kind"), GROUPS)
def test_every_installed_transport_and_backend_has_a_contract_class(
        group: str, kind: type) -> None:
    installed = {p.name for p in find(group)}
    missing = installed - _covered(kind)
    assert not missing, (f"{group} entry points without a {kind.__name__} test class "
                         f"in {__name__}: {sorted(missing)} (add one, with covers=...)")


def test_an_uncovered_entry_point_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above reads the installed entry points: one more, with no class,
    is reported by name."""
    class Fake:
        name = "uncovered"
    real = find
    monkeypatch.setitem(globals(), "find",
                        lambda group: [*real(group), Fake()] if group == GROUPS[3][0]
                        else real(group))
    with pytest.raises(AssertionError, match=r"async_backends .*\['uncovered'\]"):
        test_every_installed_transport_and_backend_has_a_contract_class(*GROUPS[3])
