"""Smoke tests of ``bench/scale_tls.py``: its pure helpers, and a tiny real run.

No timing is asserted (the machine may be shared): the real run checks that every run
was fired exactly once in every mode, over TLS in the TLS modes, and that the default
trust store was refused.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from bench._common import Backends
from bench.scale_tls import (
    MODES,
    TlsConfig,
    median_rounds,
    ratio,
    run,
    task_check,
    task_name,
    with_sizes,
    write_tls_files,
)
from cryptography import x509

from firecron.transport.cloud_tasks import TaskQueue

pytestmark = pytest.mark.timeout(180)

QUEUE = "projects/p/locations/l/queues/q"


def test_quick_is_smaller_and_sizes_override() -> None:
    assert TlsConfig.quick().runs < TlsConfig().runs
    assert with_sizes(TlsConfig(), runs=7, rounds=None).runs == 7
    assert with_sizes(TlsConfig(), runs=7, rounds=None).rounds == TlsConfig().rounds


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_the_certificate_names_the_address_and_is_issued_by_the_ca(
    tmp_path: Path, key_type: str
) -> None:
    files = write_tls_files(tmp_path, key_type)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises when it was not
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert files.key.stat().st_mode & 0o077 == 0


def test_an_unknown_key_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key_type 'dsa'"):
        write_tls_files(tmp_path, "dsa")


def test_ratio() -> None:
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 4.0) is None
    assert ratio(1.0, 0) is None


def test_task_check_counts_missing_duplicates_and_strangers() -> None:
    queue = TaskQueue(QUEUE, service_account=None, allow_private_targets=True, namespace="ns")
    keys = ["a/1", "b/1", "c/1"]
    names = [task_name(queue, k) for k in keys]
    # Under the queue's path, one name per key (the tiny real run below checks that
    # they are the names the dispatcher gives its tasks).
    assert all(name.startswith(f"{QUEUE}/tasks/") for name in names)
    assert len(set(names)) == len(keys)
    assert task_check(names, keys, lambda k: task_name(queue, k))["exactly_once"]
    bad = task_check(
        [names[0], names[0], f"{QUEUE}/tasks/other"], keys, lambda k: task_name(queue, k)
    )
    assert bad == {
        "expected": 3,
        "received": 3,
        "unique": 2,
        "missing": 2,
        "unexpected": 1,
        "duplicates": 1,
        "exactly_once": False,
    }


def test_median_rounds_takes_medians_of_numbers_only() -> None:
    rounds = [
        {"mode": "http", "cpu": 1.0, "fired": 10, "ok": True},
        {"mode": "http", "cpu": 3.0, "fired": 10, "ok": True},
        {"mode": "http", "cpu": 2.0, "fired": 10, "ok": False},
    ]
    out = median_rounds(rounds)
    assert out == {"mode": "http", "cpu": 2.0, "fired": 10, "ok": False, "rounds": 3}


def test_a_tiny_real_run_fires_every_run_once_and_over_tls(tmp_path: Path) -> None:
    backends = Backends(tmp_path)
    try:
        config = TlsConfig(runs=50, concurrency=8, key_type="ec", sender_requests=50)
        result = run(backends, ["sqlite"], config)
    finally:
        backends.close()
    figures = result.figures
    assert figures["verification_probe"]["refused"], figures["verification_probe"]
    modes = figures["modes"]
    expected = set(MODES) - ({"cloud_tasks"} if figures["cloud_tasks_skipped"] else set())
    assert set(modes) == expected
    for name, mode in modes.items():
        assert mode["fired"] == 50, (name, mode["errors"])
        assert mode["delivered"]["exactly_once"], (name, mode["delivered"])
    assert modes["http"]["tls_received"] == 0
    assert modes["tls_full"]["tls_received"] == 50
    assert modes["tls_full"]["tls_resumed"] == 0
    assert modes["tls_resumed"]["tls_received"] == 50
    # Sender alone: after its warm-up, every TLS request of the resuming sender resumed.
    alone = figures["sender_alone"]
    assert set(alone) == {"http", "tls_full", "tls_resumed"}
    assert alone["tls_full"]["resumed_share_pct"] == 0
    assert alone["tls_resumed"]["resumed_share_pct"] == 100
    if "cloud_tasks" in modes:
        assert modes["cloud_tasks"]["sink_received"] == 0  # the queue was paused
    verdicts = {c.target: c.passed for c in result.checks}
    assert verdicts["TLS verification on: the default trust store is refused"]
    assert all(passed for target, passed in verdicts.items() if "fired once" in target)
