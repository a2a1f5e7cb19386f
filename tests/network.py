"""Several hosts on one machine: Linux network namespaces on one bridge, cut and healed.

:class:`Hosts` makes one namespace per host (``h0``, ``h1``...), each with a veth
interface whose other end is a port of a bridge inside a namespace of its own (the
switch), plus one veth from this process's namespace to the switch, so the test
process reaches every host as a client on the same network. Addresses are
``10.213.<net>.<i + 1>`` (this process: ``.254``), ``<net>`` random per instance so that
runs side by side do not meet. Traffic stays inside what the instance made.

A host is cut off by taking its switch port down (:meth:`Hosts.cut`: no packet in or
out, connections stay open as on a real partition), slowed with ``tc netem``
(:meth:`Hosts.slow`), and healed. :func:`require_namespaces` skips a test where
namespaces cannot be made (not root, no ``ip``), and fails it under ``CI=true``.

:class:`Hosts` is also the launcher of :class:`~tests.support.SubprocessCluster`
(``launcher=hosts.launcher``): the scheduler runs on ``h0``, worker ``k`` on ``h<k+1>``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from typing import Any

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"


class NetemUnavailable(RuntimeError):
    """The kernel cannot delay or lose packets (no ``sch_netem``)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30,
                          check=check)


def _free_net() -> int:
    """A ``10.213.<net>.0/24`` no interface of this namespace uses (runs side by side)."""
    used = _run(IP, "-o", "-4", "addr", "show", check=False).stdout
    free = [n for n in range(1, 251) if f" 10.213.{n}." not in used]
    return random.choice(free or [random.randint(1, 250)])


def namespaces_problem() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.access(IP, os.X_OK) or not os.access(TC, os.X_OK):
        return "iproute2 is not installed (apt-get install iproute2)"
    name = f"fdprobe{os.getpid()}"
    made = _run(IP, "netns", "add", name, check=False)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    _run(IP, "netns", "del", name, check=False)
    return None


def require_namespaces() -> None:
    """Skip the calling test when namespaces cannot be made; fail under ``CI=true``."""
    problem = namespaces_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the partition test cannot run under CI: {problem}")
    pytest.skip(problem)


class Hosts:
    """``n`` hosts (network namespaces) on one bridge, and this process beside them.

    Parameters
    ----------
    n
        Number of hosts.
    """

    def __init__(self, n: int):
        self.n = n
        self.net = _free_net()
        self.tag = f"fd{os.getpid() % 10000}{self.net}"
        self.switch = f"{self.tag}sw"
        self.names = [f"{self.tag}h{i}" for i in range(n)]
        self._root_veth = f"{self.tag}r"
        self._made: list[str] = []

    def address(self, i: int) -> str:
        """IP address of host ``i``."""
        return f"10.213.{self.net}.{i + 1}"

    @property
    def client_address(self) -> str:
        """IP address of this process on the hosts' network."""
        return f"10.213.{self.net}.254"

    def _port(self, i: int) -> str:
        return f"p{i}"

    def start(self) -> Hosts:
        """Make the namespaces, the bridge and the links."""
        try:
            _run(IP, "netns", "add", self.switch)
            self._made.append(self.switch)
            _run(IP, "-n", self.switch, "link", "set", "lo", "up")
            _run(IP, "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run(IP, "-n", self.switch, "link", "set", "br0", "up")
            for i, ns in enumerate(self.names):
                _run(IP, "netns", "add", ns)
                self._made.append(ns)
                _run(IP, "-n", ns, "link", "set", "lo", "up")
                _run(IP, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                     self._port(i), "netns", self.switch)
                _run(IP, "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _run(IP, "-n", ns, "link", "set", "eth0", "up")
                _run(IP, "-n", self.switch, "link", "set", self._port(i), "master", "br0")
                _run(IP, "-n", self.switch, "link", "set", self._port(i), "up")
            _run(IP, "link", "add", self._root_veth, "type", "veth", "peer", "name", "pr",
                 "netns", self.switch)
            _run(IP, "addr", "add", f"{self.client_address}/24", "dev", self._root_veth)
            _run(IP, "link", "set", self._root_veth, "up")
            _run(IP, "-n", self.switch, "link", "set", "pr", "master", "br0")
            _run(IP, "-n", self.switch, "link", "set", "pr", "up")
        except subprocess.CalledProcessError as exc:
            self.close()
            raise RuntimeError(f"making the test network failed: {exc.cmd}: {exc.stderr}"
                               ) from exc
        return self

    def close(self) -> None:
        """Remove everything :meth:`start` made (processes inside must be gone first)."""
        _run(IP, "link", "del", self._root_veth, check=False)
        for ns in reversed(self._made):
            _run(IP, "netns", "del", ns, check=False)
        self._made.clear()

    # -- faults ----------------------------------------------------------------------
    def cut(self, i: int) -> None:
        """Cut host ``i`` off: its switch port goes down (nothing in or out)."""
        _run(IP, "-n", self.switch, "link", "set", self._port(i), "down")

    def heal(self, i: int) -> None:
        """Undo :meth:`cut` and :meth:`slow` for host ``i``."""
        _run(IP, "-n", self.switch, "link", "set", self._port(i), "up")
        _run(TC, "-n", self.names[i], "qdisc", "del", "dev", "eth0", "root", check=False)

    def cut_client(self) -> None:
        """Cut this process off from every host."""
        _run(IP, "-n", self.switch, "link", "set", "pr", "down")

    def heal_client(self) -> None:
        """Undo :meth:`cut_client`."""
        _run(IP, "-n", self.switch, "link", "set", "pr", "up")

    def slow(self, i: int, delay: str = "50ms", jitter: str = "10ms",
             loss: str = "0%") -> None:
        """Delay (with jitter) and lose the packets host ``i`` sends (``tc netem``).

        Raises
        ------
        NetemUnavailable
            The kernel has no netem queueing discipline (``sch_netem``).
        """
        done = _run(TC, "-n", self.names[i], "qdisc", "replace", "dev", "eth0", "root",
                    "netem", "delay", delay, jitter, "loss", loss, check=False)
        if done.returncode:
            if "unknown" in done.stderr.lower():
                raise NetemUnavailable(f"this kernel has no netem qdisc (sch_netem): "
                                       f"{done.stderr.strip()}")
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout,
                                                done.stderr)

    # -- processes -------------------------------------------------------------------
    def command(self, i: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``i``."""
        return [IP, "netns", "exec", self.names[i], *argv]

    def launcher(self, role: str, index: int) -> tuple[list[str], str]:
        """For :class:`~tests.support.SubprocessCluster`: the command prefix and the
        address of the scheduler (``h0``) or of worker ``index`` (``h<index + 1>``)."""
        i = 0 if role == "scheduler" else index + 1
        if i >= self.n:
            raise ValueError(f"no host for {role} {index}: make Hosts({i + 1}) or more")
        return [IP, "netns", "exec", self.names[i]], self.address(i)

    def __enter__(self) -> Hosts:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
