"""A real deployment tool onto several hosts: ``distributed``'s ``SSHCluster`` against
Debian's ``openssh-server``, one ``sshd`` in each network namespace (``tests/network.py``),
keys made by the test. The cluster object goes to ``fd.connect(cluster)``; a supervised
singleton, channels and a small optimization then run across the hosts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import foundation_dask as fd
from tests.network import Hosts, require_namespaces
from tests.support import wait_for

pytestmark = [pytest.mark.partition, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

SSHD_CONFIG = """\
Port 22
ListenAddress {address}
HostKey {tmp}/host_key
PermitRootLogin prohibit-password
AuthorizedKeysFile {tmp}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile {tmp}/sshd-{i}.pid
"""


def _require_ssh() -> None:
    problem = None
    if not os.access(SSHD, os.X_OK):
        problem = "no sshd (apt-get install openssh-server)"
    else:
        try:
            import asyncssh  # noqa: F401
        except ImportError:
            problem = "asyncssh is not installed (pip install -e '.[test]')"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the SSH deployment test cannot run under CI: {problem}")
    pytest.skip(problem)


@pytest.fixture
def ssh_hosts(tmp_path) -> Iterator[tuple[Hosts, Path]]:
    """Three hosts, each running sshd that accepts the key ``tmp_path / "id"``."""
    require_namespaces()
    _require_ssh()
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "host_key")], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    hosts = Hosts(3).start()
    daemons = []
    try:
        for i in range(3):
            config = tmp_path / f"sshd-{i}.conf"
            config.write_text(SSHD_CONFIG.format(address=hosts.address(i), tmp=tmp_path, i=i))
            with open(tmp_path / f"sshd-{i}.log", "wb") as log:
                daemons.append(subprocess.Popen(
                    hosts.command(i, [SSHD, "-D", "-e", "-f", str(config)]),
                    stdout=log, stderr=subprocess.STDOUT))
        yield hosts, key
    finally:
        fd.close()
        for d in daemons:
            d.terminate()
            d.wait(timeout=10)
        hosts.close()


def _place() -> str:
    from distributed import get_worker

    return get_worker().address


def _announce(i: int) -> int:
    fd.Channels.broadcast("events", ("from-worker", i))
    return i


@pytest.mark.timeout(300)
def test_sshcluster_onto_the_hosts_runs_foundation(ssh_hosts):
    from distributed import SSHCluster

    from foundation_dask import dspex
    from foundation_dask.demo import KeyValueStore
    from tests._helpers import make_examples, metric, program

    hosts, key = ssh_hosts
    for i in range(3):  # each sshd answers before the cluster is made
        wait_for(lambda i=i: subprocess.run(
            ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
             "-o", "UserKnownHostsFile=/dev/null", f"root@{hosts.address(i)}", "true"],
            capture_output=True, timeout=20).returncode == 0, timeout=60, period=0.5)
    cluster = SSHCluster(
        [hosts.address(i) for i in range(3)],  # the first runs the scheduler
        connect_options={"known_hosts": None, "client_keys": [str(key)], "username": "root"},
        worker_options={"nthreads": 1, "memory_limit": "2GiB"},
        scheduler_options={"host": hosts.address(0), "port": 0, "dashboard_address": ":0",
                           "preload": ["foundation_dask.dashboard"]},
        # the hosts share this machine's Python; the tests' helpers come along by path
        remote_python=f"env PYTHONPATH={REPO} {sys.executable}",
    )
    try:
        client = fd.connect(cluster)
        client.wait_for_workers(2, timeout=120)
        workers = sorted(client.scheduler_info()["workers"])
        assert {w.split("//")[1].split(":")[0] for w in workers} == {
            hosts.address(1), hosts.address(2)}  # one worker on each host
        kv = fd.ProcessManager.start_singleton(KeyValueStore, name="kv")
        kv.put("k", 42).result(timeout=60)
        assert kv.get("k").result(timeout=60) == 42
        with fd.Channels.subscribe("events") as sub:
            client.gather([client.submit(_announce, i, workers=[w], pure=False)
                           for i, w in enumerate(workers)])
            got = sorted(sub.get(timeout=30).payload for _ in workers)
        assert got == [("from-worker", 0), ("from-worker", 1)]
        result = dspex.DistributedOptimizer.optimize_program_distributed(
            program(), make_examples(12), metric, valset=make_examples(12, 40),
            num_candidate_programs=2, max_bootstrapped_demos=2, max_labeled_demos=2, seed=1,
            display_progress=False)
        assert result.status == "completed" and result.best_score == 100.0
        # the Foundation pages came with the scheduler's preload (the dashboard's list)
        port = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.http_server.port)
        listed = urllib.request.urlopen(
            f"http://{hosts.address(0)}:{port}/individual-plots.json", timeout=30).read()
        assert "/individual-foundation-health" in json.loads(listed).values()
    finally:
        fd.close()
        cluster.close()
