"""A slow, lossy link in userspace: the netfilter queue that :meth:`Hosts.slow` feeds.

Run inside a host's network namespace (``ip netns exec <ns> python3 tests/_delayer.py
--queue 7 --delay 0.04 --jitter 0.02 --loss 0.03``), with an iptables rule there that
sends the host's outgoing packets to that queue (``-j NFQUEUE --queue-num 7``). It binds
the queue over netlink (``NETLINK_NETFILTER``, the kernel's ``nfnetlink_queue``), takes
each packet's id, and gives the kernel its verdict later: ACCEPT after ``delay`` plus a
uniform draw from ``[-jitter, jitter]`` (never below zero; packets can overtake each
other, as on ``netem``), or DROP with probability ``loss``. A dropped packet was already
sent as far as the sending socket knows: it is lost on the way, not refused.

Only the standard library: the netlink messages are packed here. It prints ``ready``
once the queue is bound (or ``error: ...`` and exits 1), and stops on SIGTERM, SIGINT or
the end of its standard input (its parent is gone): then every packet it still holds
is accepted at once, and the socket is closed, which unbinds the queue.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import os
import random
import select
import signal
import socket
import stat
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_DROP, NF_ACCEPT = 0, 1
NLA_TYPE_MASK = 0x3FFF

#: Packets the kernel holds for this queue at most (its default is 1024).
QUEUE_MAXLEN = 65536
#: Receive buffer of the netlink socket: a packet whose message does not fit would
#: stay queued in the kernel with no verdict.
RCVBUF = 16 << 20


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST,
             seq: int = 0) -> bytes:
    """One nfnetlink message of the queue subsystem (nlmsghdr, nfgenmsg, attributes)."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags,
                       seq, 0) + body


def _verdict(queue: int, packet_id: int, verdict: int) -> bytes:
    return _message(NFQNL_MSG_VERDICT, queue,
                    _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))


def _messages(data: bytes):
    """``(type, payload)`` of each netlink message in one datagram."""
    at = 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if length < 16:
            return
        yield kind, data[at + 16:at + length]
        at += (length + 3) & ~3


def _packet_id(payload: bytes) -> int | None:
    """The packet id in an ``NFQNL_MSG_PACKET`` payload (after its nfgenmsg)."""
    at = 4
    while at + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, at)
        if length < 4:
            return None
        if kind & NLA_TYPE_MASK == NFQA_PACKET_HDR:
            return struct.unpack_from("!I", payload, at + 4)[0]
        at += (length + 3) & ~3
    return None


def bind(queue: int) -> socket.socket:
    """A netlink socket bound to netfilter queue ``queue``, copying metadata only.

    Raises
    ------
    OSError
        The kernel refused (no ``nfnetlink_queue``, the queue taken, not root).
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, 0))
        attrs = (_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0,
                                                 socket.AF_INET))
                 + _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                 + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)))
        sock.send(_message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, 1))
        for kind, payload in _messages(sock.recv(65536)):
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise OSError(code, f"binding netfilter queue {queue}: "
                                        f"{os.strerror(code)}")
                return sock
        raise OSError(errno.EPROTO, f"binding netfilter queue {queue}: no answer")
    except BaseException:
        sock.close()
        raise


class Delayer:
    """Holds the packets of one queue and gives their verdicts when due.

    Parameters
    ----------
    sock
        The socket :func:`bind` made.
    queue
        Its queue number.
    delay, jitter
        Seconds each packet is held: ``delay`` plus a uniform draw from
        ``[-jitter, jitter]``, at least zero.
    loss
        Probability that a packet is dropped (its verdict is given at once).
    rng
        The source of the draws.
    """

    def __init__(self, sock: socket.socket, queue: int, delay: float, jitter: float,
                 loss: float, rng: random.Random):
        self.sock, self.queue = sock, queue
        self.delay, self.jitter, self.loss, self.rng = delay, jitter, loss, rng
        self.held: list[tuple[float, int]] = []
        self.accepted = self.dropped = 0

    def receive(self) -> None:
        """Take every packet the socket has now."""
        drops = []
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # messages lost: their packets time out
                    continue
                raise
            now = time.monotonic()
            for kind, payload in _messages(data):
                if kind & 0xFF != NFQNL_MSG_PACKET or kind >> 8 != NFNL_SUBSYS_QUEUE:
                    continue  # an error answer to a verdict, or something else
                packet_id = _packet_id(payload)
                if packet_id is None:
                    continue
                if self.rng.random() < self.loss:
                    drops.append(_verdict(self.queue, packet_id, NF_DROP))
                    continue
                hold = self.delay + self.rng.uniform(-self.jitter, self.jitter)
                heapq.heappush(self.held, (now + max(hold, 0.0), packet_id))
        if drops:
            self.dropped += len(drops)
            self._send(drops)

    def release(self, everything: bool = False) -> float | None:
        """Accept the packets that are due (all of them with ``everything``); seconds
        until the next one is due, or None when none is held."""
        now = time.monotonic()
        due = []
        while self.held and (everything or self.held[0][0] <= now):
            due.append(_verdict(self.queue, heapq.heappop(self.held)[1], NF_ACCEPT))
        if due:
            self.accepted += len(due)
            self._send(due)
        return max(self.held[0][0] - now, 0.0) if self.held else None

    def _send(self, verdicts: list[bytes]) -> None:
        # several netlink messages in one datagram; the kernel reads them in turn
        for start in range(0, len(verdicts), 512):
            self.sock.send(b"".join(verdicts[start:start + 512]))


def main(argv: list[str] | None = None) -> int:
    """Bind the queue, print ``ready``, delay and drop until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="probability, 0 to 1")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        sock = bind(args.queue)
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    delayer = Delayer(sock, args.queue, args.delay, args.jitter, args.loss,
                      random.Random(args.seed))
    watched = [sock, wake_r]
    with contextlib.suppress(OSError, ValueError):
        if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
            watched.append(sys.stdin)  # a pipe from the parent: its end is ours
    print("ready", flush=True)
    timeout = None
    while not stop:
        readable, _, _ = select.select(watched, [], [], timeout)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 4096):
            break  # the parent is gone
        if sock in readable:
            delayer.receive()
        timeout = delayer.release()
    delayer.receive()
    delayer.release(everything=True)
    sock.close()
    print(f"accepted {delayer.accepted} dropped {delayer.dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
