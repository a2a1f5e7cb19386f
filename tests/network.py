"""Several hosts on one machine: Linux network namespaces on one bridge, cut and healed.

:class:`Hosts` makes one namespace per host (``h0``, ``h1``...), each with a veth
interface whose other end is a port of a bridge inside a namespace of its own (the
switch), plus one veth from this process's namespace to the switch, so the test
process reaches every host as a client on the same network. Addresses are
``10.213.<net>.<i + 1>`` (this process: ``.254``), ``<net>`` random per instance so that
runs side by side do not meet. Traffic stays inside what the instance made.

A host is cut off by taking its switch port down (:meth:`Hosts.cut`: no packet in or
out, connections stay open as on a real partition), slowed (:meth:`Hosts.slow`), and
healed. A slow link works the same on every kernel, with or without ``sch_netem``: in
the host's namespace an iptables rule sends each IPv4 packet the host puts on its
interface to a netfilter queue (``-j NFQUEUE``), and ``tests/_delayer.py``, a process in
that namespace, gives each one its verdict: ACCEPT after the delay and its jitter, or
DROP (the loss). The packets take the kernel's own path; only their release waits in
userspace. It needs Debian's ``iptables`` (its ``iptables`` command, nft by default,
else ``iptables-legacy``) and a kernel with ``nfnetlink_queue`` and ``xt_NFQUEUE``.

:func:`require_namespaces` skips a test where namespaces cannot be made (not root, no
``ip``), :func:`require_slow_links` one where links cannot be slowed (no ``iptables``);
under ``CI=true`` both fail it instead, and so does :func:`unavailable` for a
:class:`SlowLinkUnavailable` from :meth:`Hosts.slow`.

:class:`Hosts` is also the launcher of :class:`~tests.support.SubprocessCluster`
(``launcher=hosts.launcher``): the scheduler runs on ``h0``, worker ``k`` on ``h<k+1>``.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"
#: The iptables commands tried in turn: the system's choice (nft on Debian), then legacy.
IPTABLES = ("iptables", "iptables-legacy")
DELAYER = Path(__file__).with_name("_delayer.py")
#: The netfilter queue of a slowed host (queues are per namespace: one number serves all).
QUEUE = 7


class SlowLinkUnavailable(RuntimeError):
    """A link cannot be slowed here: no ``iptables``, or no netfilter queue in the kernel."""


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
    if not os.access(IP, os.X_OK):
        return "iproute2 is not installed (apt-get install iproute2)"
    name = f"fdprobe{os.getpid()}"
    made = _run(IP, "netns", "add", name, check=False)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    _run(IP, "netns", "del", name, check=False)
    return None


def slow_links_problem() -> str | None:
    """Why :meth:`Hosts.slow` cannot work here (as far as can be told without a
    namespace), or None."""
    if not _iptables_commands():
        return "iptables is not installed (apt-get install iptables)"
    return None


def unavailable(problem: str) -> None:
    """Skip the calling test for ``problem``; fail it under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the partition test cannot run under CI: {problem}")
    pytest.skip(problem)


def require_namespaces() -> None:
    """Skip the calling test when namespaces cannot be made; fail under ``CI=true``."""
    problem = namespaces_problem()
    if problem is not None:
        unavailable(problem)


def require_slow_links() -> None:
    """Skip the calling test when links cannot be slowed; fail under ``CI=true``."""
    problem = namespaces_problem() or slow_links_problem()
    if problem is not None:
        unavailable(problem)


def _iptables_commands() -> list[str]:
    return [path for name in IPTABLES if (path := shutil.which(name))]


def _seconds(text: str) -> float:
    """``"40ms"``, ``"1.5s"``, ``"500us"`` (or ``"0"``) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|usec|ms|msec|s|sec)?\s*", text)
    if match is None or (match[2] is None and float(match[1]) != 0):
        raise ValueError(f"not a duration with a unit (us, ms, s): {text!r}")
    scale = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3}.get(match[2] or "s", 1.0)
    return float(match[1]) * scale


def _probability(text: str) -> float:
    """``"3%"`` as 0.03."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*", text)
    if match is None or float(match[1]) > 100:
        raise ValueError(f"not a percentage from 0% to 100%: {text!r}")
    return float(match[1]) / 100


@dataclass
class _SlowLink:
    """What :meth:`Hosts.slow` set up on one host."""

    iptables: str
    rule: list[str]
    delayer: subprocess.Popen


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
        self._slowed: dict[int, _SlowLink] = {}

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
        """Remove everything :meth:`start` and :meth:`slow` made (the delayers are
        ended here; other processes inside must be gone first)."""
        for i in list(self._slowed):
            self._unslow(i, check=False)
        _run(IP, "link", "del", self._root_veth, check=False)
        for ns in reversed(self._made):
            _run(IP, "netns", "del", ns, check=False)
        self._made.clear()

    # -- faults ----------------------------------------------------------------------
    def cut(self, i: int) -> None:
        """Cut host ``i`` off: its switch port goes down (nothing in or out)."""
        _run(IP, "-n", self.switch, "link", "set", self._port(i), "down")

    def heal(self, i: int) -> None:
        """Undo :meth:`cut` and :meth:`slow` for host ``i``.

        Raises
        ------
        RuntimeError
            The delayer of a slowed host had ended before (the link was not slow until
            the heal); the slowing is undone all the same.
        """
        _run(IP, "-n", self.switch, "link", "set", self._port(i), "up")
        self._unslow(i)

    def cut_client(self) -> None:
        """Cut this process off from every host."""
        _run(IP, "-n", self.switch, "link", "set", "pr", "down")

    def heal_client(self) -> None:
        """Undo :meth:`cut_client`."""
        _run(IP, "-n", self.switch, "link", "set", "pr", "up")

    def slow(self, i: int, delay: str = "50ms", jitter: str = "10ms",
             loss: str = "0%") -> None:
        """Delay (with jitter) and lose the IPv4 packets host ``i`` sends.

        Each packet host ``i`` puts on its interface waits ``delay`` plus a uniform draw
        from ``[-jitter, jitter]`` (never less than nothing; packets can overtake each
        other), or is lost with probability ``loss``, after it left the sending socket
        (a loss on the way, not a refused send). Calling it again replaces the settings;
        :meth:`heal` undoes it.

        Parameters
        ----------
        i
            The host.
        delay, jitter
            Durations with a unit: ``"40ms"``, ``"1s"``, ``"500us"``.
        loss
            A percentage: ``"3%"``.

        Raises
        ------
        SlowLinkUnavailable
            ``iptables`` is not installed, cannot add an ``NFQUEUE`` rule, or the kernel
            has no netfilter queue (``nfnetlink_queue``) for the delayer.
        """
        delay_s, jitter_s, loss_p = _seconds(delay), _seconds(jitter), _probability(loss)
        problem = slow_links_problem()
        if problem is not None:
            raise SlowLinkUnavailable(problem)
        self._unslow(i, check=False)
        delayer = subprocess.Popen(
            self.command(i, [sys.executable, str(DELAYER), "--queue", str(QUEUE),
                             "--delay", repr(delay_s), "--jitter", repr(jitter_s),
                             "--loss", repr(loss_p)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            line = self._first_line(delayer, timeout=30)
            if line != "ready":
                raise SlowLinkUnavailable(
                    f"the netfilter queue delayer did not start in {self.names[i]} (the "
                    f"kernel needs nfnetlink_queue): {line or delayer.poll()}")
            rule = ["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", str(QUEUE),
                    "--queue-bypass"]
            errors = []
            for iptables in _iptables_commands():
                added = _run(*self.command(i, [iptables, "-w", "-A", *rule]), check=False)
                if added.returncode == 0:
                    break
                errors.append(f"{iptables}: {added.stderr.strip()}")
            else:
                raise SlowLinkUnavailable(
                    "no iptables could add an NFQUEUE rule (the kernel needs xt_NFQUEUE): "
                    + "; ".join(errors))
        except BaseException:
            self._stop(delayer)
            raise
        self._slowed[i] = _SlowLink(iptables, rule, delayer)

    @staticmethod
    def _first_line(process: subprocess.Popen, timeout: float) -> str:
        """The first line ``process`` prints, or what it printed when it ended or the
        ``timeout`` ran out."""
        assert process.stdout is not None
        fd, data = process.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data and (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        return data.decode(errors="replace").partition("\n")[0].strip()

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        """End a delayer: it accepts the packets it holds, then exits."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def _unslow(self, i: int, check: bool = True) -> None:
        """Remove host ``i``'s rule, then end its delayer (so no packet is left in a
        queue nobody reads); raise if the delayer had ended before and ``check``."""
        link = self._slowed.pop(i, None)
        if link is None:
            return
        _run(*self.command(i, [link.iptables, "-w", "-D", *link.rule]), check=False)
        ended = link.delayer.poll()
        self._stop(link.delayer)
        if check and ended is not None:
            raise RuntimeError(f"the delayer of {self.names[i]} had ended (exit {ended}) "
                               f"before the heal")

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
