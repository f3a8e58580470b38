"""Codec benchmark: every installed serializer and compressor, on two payloads.

Run alone: ``uv run --frozen python bench/codecs.py [--seconds 0.3]``. Prints one JSON
object: for each codec and payload, encode+decode round trips per second and the
encoded size in bytes. Payloads: a typical task message body (``[args, kwargs,
embed]``, about 600 bytes as JSON) and a 100 KB argument. Compressors are measured on
the JSON encoding of each payload. Each measurement is time-boxed, so the whole run
stays well under 30 s however slow a codec is.

Codecs come from the entry points, so a newly installed plugin is measured too. The
``auth`` serializer signs with a throwaway RSA-2048 key made for this run.
"""

from __future__ import annotations

import os
import sys

# `python bench/codecs.py` puts bench/ first on sys.path, where a sibling benchmark
# (bench/redis.py, …) would shadow the real package of that name.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from conveyor import Conveyor  # noqa: E402
from conveyor.plugins import find  # noqa: E402


def task_body() -> tuple[Any, ...]:
    """A typical task body: a few ids, a short list of records, some options."""
    items = [{"sku": f"SKU-{n:05d}", "qty": n % 4 + 1, "price": 19.99 + n} for n in range(6)]
    args = [48213, "customer@example.com", items]
    kwargs = {"priority": "normal", "notify": True, "tags": ["web", "eu-west", "retry-safe"],
              "note": "Deliver between 9:00 and 17:00; leave with the neighbour if absent.",
              "requested_at": "2030-01-02T03:04:05+00:00"}
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return (args, kwargs, embed)


def large_body(target: int = 100_000) -> tuple[Any, ...]:
    """A body whose JSON encoding is about ``target`` bytes: a list of records."""
    rows: list[dict[str, Any]] = []
    size = 0
    while size < target:
        i = len(rows)
        row = {"id": i, "name": f"user-{i}", "email": f"user{i}@example.org",
               "score": round(i * 0.37, 2), "active": i % 3 == 0, "groups": ["a", "b"]}
        rows.append(row)
        size += len(json.dumps(row)) + 2
    return ([rows], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def round_trip(encode: Callable[[Any], Any], decode: Callable[[Any], Any], value: Any) -> Any:
    return decode(encode(value))


def measure(work: Callable[[], Any], seconds: float) -> float:
    """Calls of ``work`` per second, timed over about ``seconds`` (at least 3 calls)."""
    work()  # warm up: imports, lazily built contexts
    runs, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        work()
        runs += 1
        now = time.perf_counter()
        if now >= deadline and runs >= 3:
            return runs / (now - start)


def throwaway_identity(folder: Path) -> dict[str, str] | None:
    """Key, certificate and store for the auth serializer, or None without cryptography."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor-bench")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    (folder / "store").mkdir()
    (folder / "bench.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "bench.pem").write_bytes(pem)
    (folder / "store" / "bench.pem").write_bytes(pem)
    return {"security_key": str(folder / "bench.key"),
            "security_certificate": str(folder / "bench.pem"),
            "security_cert_store": str(folder / "store")}


def bench_serializers(app: Conveyor, payloads: dict[str, Any], seconds: float
                      ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted({p.name for p in find("conveyor.serializers")}):
        try:
            ser = app.codecs.serializer(name)
        except Exception as exc:  # noqa: BLE001 - reported, the others still run
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        row: dict[str, Any] = {"content_type": ser.content_type}
        out[name] = row
        for label, value in payloads.items():
            try:
                encoded = ser.dumps(value)
                ops = measure(partial(round_trip, ser.dumps, ser.loads, value), seconds)
            except Exception as exc:  # noqa: BLE001
                row[label] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            row[label] = {"ops_per_s": round(ops, 1), "size": len(encoded)}
    return out


def bench_compressors(app: Conveyor, raw: dict[str, bytes], seconds: float
                      ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted({p.name for p in find("conveyor.compressors")}):
        try:
            comp = app.codecs.compressor(name)
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        row: dict[str, Any] = {"header": comp.content_type}
        out[name] = row
        for label, data in raw.items():
            packed = comp.compress(data)
            ops = measure(partial(round_trip, comp.compress, comp.decompress, data), seconds)
            row[label] = {"ops_per_s": round(ops, 1), "size": len(packed),
                          "ratio": round(len(packed) / len(data), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3,
                        help="time spent on each measurement (default 0.3)")
    ns = parser.parse_args(argv)

    payloads = {"task": task_body(), "100k": large_body()}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        identity = throwaway_identity(Path(tmp)) or {}
        app = Conveyor("bench", broker="memory://bench", backend="memory://bench",
                       config=identity)
        json_ser = app.codecs.serializer("json")
        raw = {label: json_ser.dumps(value) for label, value in payloads.items()}
        started = time.perf_counter()
        report = {
            "python": platform.python_version(),
            "seconds_per_measurement": ns.seconds,
            "payloads": {label: {"json_size": len(data)} for label, data in raw.items()},
            "serializers": bench_serializers(app, payloads, ns.seconds),
            "compressors": bench_compressors(app, raw, ns.seconds),
        }
        report["elapsed_s"] = round(time.perf_counter() - started, 2)
        app.close()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
