"""``foundation_dask.connect()`` on real clusters: embedded, by address, over mutual TLS."""

from __future__ import annotations

import datetime
import gc
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import urlparse

import dask
import distributed
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import LocalCluster
from distributed.comm.addressing import parse_host_port
from distributed.security import Security

import foundation_dask as fd
from foundation_dask.core.cluster import get_cluster
from foundation_dask.core.plugin import _load, extension_paths
from foundation_dask.errors import ClusterConnectionError
from tests.support import SubprocessCluster, wait_for

CORE_EXTENSIONS = {"channels", "health", "processes", "registry", "secrets"}
#: Every scheduler-side part the plugin is configured to start.
EXTENSIONS = sorted(_load(path).name for path in extension_paths("scheduler"))


def ping(client: distributed.Client) -> dict:
    info = client.sync(client.scheduler.foundation_ping)
    return {"extensions": sorted(info["extensions"]), "worker_plugin": info["worker_plugin"]}


def scheduler_plugin_id(client: distributed.Client) -> int:
    return client.run_on_scheduler(
        lambda dask_scheduler: id(dask_scheduler.extensions["foundation"])
    )


def workers_have_plugin(client: distributed.Client) -> dict[str, bool]:
    return client.run(lambda dask_worker: "foundation" in dask_worker.extensions)


@pytest.fixture
def no_configured_address(monkeypatch):
    """Neither dask config nor the environment names a scheduler."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"foundation.scheduler-address": None}):
        yield


@pytest.fixture
def closing():
    """Close whatever ``fd.connect()`` opened, whatever the test's outcome."""
    try:
        yield
    finally:
        fd.close()


# -- embedded cluster ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_core_extensions_are_configured():
    assert set(EXTENSIONS) >= CORE_EXTENSIONS


@pytest.mark.timeout(120)
def test_connect_starts_embedded_cluster_with_worker_processes(no_configured_address, closing):
    with dask.config.set({"foundation.cluster.n-workers": 1}):
        client = fd.connect()

    assert isinstance(client.cluster, LocalCluster)
    assert get_cluster() is client.cluster
    assert distributed.get_client() is client
    client.wait_for_workers(1, timeout=60)
    assert len(client.scheduler_info()["workers"]) == 1  # foundation.cluster.n-workers
    pids = client.run(os.getpid)
    assert pids and os.getpid() not in pids.values()

    assert ping(client) == {"extensions": EXTENSIONS, "worker_plugin": True}
    wait_for(lambda: all(workers_have_plugin(client).values()))
    plugin_id = scheduler_plugin_id(client)

    again = fd.connect()
    assert again is client
    assert scheduler_plugin_id(client) == plugin_id
    assert ping(client) == {"extensions": EXTENSIONS, "worker_plugin": True}

    with pytest.raises(RuntimeError, match="already connected"):
        fd.connect(n_workers=2)
    assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2


@pytest.mark.timeout(120)
def test_connect_embedded_with_temporary_tls(no_configured_address, closing):
    client = fd.connect(n_workers=1, security=True)
    assert client.scheduler.address.startswith("tls://")
    assert client.security.require_encryption
    assert client.submit(lambda x: x * 2, 21).result(timeout=30) == 42
    assert ping(client)["worker_plugin"] is True


@pytest.mark.timeout(120)
def test_connect_takes_a_cluster_object_which_then_scales(closing):
    from foundation_dask.dspex.orchestration import scale_cluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        client = fd.connect(cluster)
        assert client.cluster is cluster and get_cluster() is cluster
        assert fd.connect(cluster) is client  # the same connection again
        assert ping(client)["worker_plugin"]
        decision = scale_cluster(client, "up", 1, reason="test")
        assert decision["outcome"] == "requested 2 workers"
        client.wait_for_workers(2, timeout=60)
        with pytest.raises(TypeError, match="configure that cluster instead"):
            fd.connect(cluster, n_workers=3)
        fd.close()
        assert cluster.status.name == "running"  # the caller's cluster stays open
        # by address only: scaling is not possible, and the decision says why
        client = fd.connect(cluster.scheduler_address)
        assert get_cluster() is None
        decision = scale_cluster(client, "up", 1, reason="test")
        assert decision["outcome"].startswith("cannot add workers: only the scheduler address")
        assert "foundation_dask.connect(cluster)" in decision["outcome"]
        assert len(client.scheduler_info()["workers"]) == 2
        with pytest.raises(TypeError, match="scheduler address .* or a distributed.deploy"):
            fd.connect(8786)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_cluster_options_with_address_raise_type_error(monkeypatch, closing):
    with pytest.raises(TypeError, match="only apply to the embedded cluster"):
        fd.connect("tcp://127.0.0.1:1", n_workers=1)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="DASK_SCHEDULER_ADDRESS") as info:
        fd.connect(n_workers=1)
    assert "n_workers" in str(info.value)
    assert get_cluster() is None


# -- existing clusters -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_connect_uses_config_then_environment(
    subprocess_cluster: SubprocessCluster, monkeypatch, no_configured_address
):
    address = subprocess_cluster.start(1).address

    # dask config wins over the environment (here pointing nowhere).
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    with dask.config.set({"foundation.scheduler-address": address}):
        client = fd.connect()
    assert client.scheduler.address == address
    assert client.cluster is None and get_cluster() is None
    assert ping(client) == {"extensions": EXTENSIONS, "worker_plugin": True}
    plugin_id = scheduler_plugin_id(client)
    fd.close()
    assert client.status == "closed"

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    client = fd.connect()
    assert client.scheduler.address == address
    assert client.cluster is None
    # The plugins live on the scheduler: a new client finds them, it does not reinstall.
    assert scheduler_plugin_id(client) == plugin_id
    client.wait_for_workers(1, timeout=60)
    assert client.submit(lambda: "ok").result(timeout=30) == "ok"
    # The same scheduler, written without its scheme: the same client.
    assert fd.connect(address.removeprefix("tcp://")) is client


@pytest.mark.timeout(120)
def test_plugins_reach_workers_that_join_after_connect(subprocess_cluster: SubprocessCluster):
    subprocess_cluster.start(1)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(1, timeout=60)
    assert ping(client) == {"extensions": EXTENSIONS, "worker_plugin": True}
    first = wait_for(lambda: workers_have_plugin(client))
    assert list(first.values()) == [True]

    subprocess_cluster.add_worker()
    client.wait_for_workers(2, timeout=60)
    status = wait_for(
        lambda: (s := workers_have_plugin(client)) and len(s) == 2 and all(s.values()) and s,
        timeout=60,
    )
    assert len(status) == 2 and all(status.values())
    names = client.run(lambda dask_worker: dask_worker.name)
    assert sorted(names.values()) == ["w0", "w1"]


# -- mutual TLS ------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A throwaway CA that issues certificates for scheduler, workers and clients."""

    def __init__(self, directory: Path, name: str = "foundation-test-ca"):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str) -> tuple[str, str]:
        """Write a certificate (server and client use) for ``common_name``; returns paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file = self.directory / f"{common_name}.pem"
        key_file = self.directory / f"{common_name}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return str(cert_file), str(key_file)

    def security(self, common_name: str = "client") -> Security:
        cert, key = self.issue(common_name)
        return Security(
            tls_ca_file=str(self.ca_file),
            tls_client_cert=cert,
            tls_client_key=key,
            require_encryption=True,
        )


def tls_exchange_without_certificate(address: str, ca_file: Path) -> bytes:
    """Open a TLS connection that trusts ``ca_file`` but has no client certificate."""
    host, port = parse_host_port(address.split("://", 1)[1])
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    with (
        socket.create_connection((host, port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        # With TLS 1.3 the server checks the client's certificate after the handshake,
        # so its refusal arrives on the first read.
        return tls.recv(1)


def refused_client(address: str, expected, **kwargs) -> str:
    """Assert that a ``distributed.Client`` cannot connect; returns the error message."""
    with pytest.raises(expected) as info:
        distributed.Client(address, timeout=5, set_as_default=False, **kwargs)
    message = str(info.value)
    del info
    # A Client that failed to start closes itself in ``__del__``: let that happen now,
    # while its event loop still runs, rather than at interpreter exit.
    gc.collect()
    return message


def _tls_args(ca: CertificateAuthority, common_name: str) -> list[str]:
    cert, key = ca.issue(common_name)
    return ["--tls-ca-file", str(ca.ca_file), "--tls-cert", cert, "--tls-key", key]


@pytest.mark.timeout(120)
def test_connect_with_mutual_tls(tmp_path: Path):
    ca = CertificateAuthority(tmp_path / "ca")
    cluster = SubprocessCluster(
        tmp_path,
        protocol="tls",
        scheduler_args=_tls_args(ca, "scheduler"),
        worker_args=_tls_args(ca, "worker"),
    )
    try:
        cluster.start(1)
        address = cluster.address
        assert address.startswith("tls://")

        client = fd.connect(address, security=ca.security("client"))
        client.wait_for_workers(1, timeout=60)
        assert client.submit(lambda x: x + 1, 41).result(timeout=30) == 42
        assert ping(client) == {"extensions": EXTENSIONS, "worker_plugin": True}
        assert all(wait_for(lambda: workers_have_plugin(client)).values())

        # No credentials at all: the client cannot even open a TLS connection.
        refused_client(address, (TypeError, OSError))
        # Trusts the scheduler's CA but presents no certificate: the scheduler refuses it.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_exchange_without_certificate(address, ca.ca_file)
        # Credentials from another CA: refused.
        other = CertificateAuthority(tmp_path / "other-ca", name="other-ca")
        refused_client(address, OSError, security=other.security("intruder"))
        # Trusts the scheduler's CA, but its own certificate comes from another CA: the
        # scheduler does not accept it.
        intruder = other.security("intruder-2")
        intruder.tls_ca_file = str(ca.ca_file)
        refused_client(address, OSError, security=intruder)

        # The authorised client is unaffected by the refused ones.
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    finally:
        fd.close()
        cluster.close()


# -- dashboard binding, lost connections, plain Dask clusters ---------------------------


@pytest.mark.timeout(120)
def test_embedded_dashboard_listens_on_loopback_only(no_configured_address, closing):
    import psutil

    client = fd.connect(n_workers=1)
    port = urlparse(client.dashboard_link).port
    listening = [c.laddr for c in psutil.Process().net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening
    assert "127.0.0.1" in client.dashboard_link


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_lost_scheduler_raises_instead_of_starting_an_embedded_cluster(
        tmp_path: Path, no_configured_address):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = SubprocessCluster(tmp_path / "first").start(1)
    second = SubprocessCluster(tmp_path / "second")
    try:
        # a plain Dask client: the first facade call installs the Foundation plugins
        plain = distributed.Client(first.address)
        plain.wait_for_workers(1, timeout=60)
        fd.ProcessRegistry.register("before", 1)
        assert ping(plain)["worker_plugin"]
        address = plain.scheduler.address

        first.scheduler.kill()
        first.scheduler.wait(timeout=30)
        wait_for(lambda: plain.status != "running", timeout=60)
        for call in (fd.ProcessManager.list_processes,
                     lambda: fd.ProcessRegistry.lookup("before"),
                     lambda: fd.ProcessRegistry.register("after", 2)):
            with pytest.raises(ClusterConnectionError, match=address) as info:
                call()
            assert info.value.address == address
        assert get_cluster() is None
        plain.close()
        with pytest.raises(ClusterConnectionError, match=address):
            fd.ProcessRegistry.select()
        assert get_cluster() is None

        second.start(1)
        client = fd.connect(second.address)
        client.wait_for_workers(1, timeout=60)
        assert fd.ProcessRegistry.register("after", 2).owner == client.id
        assert fd.ProcessManager.list_processes() is not None
    finally:
        fd.close()
        second.close()
        first.close()
