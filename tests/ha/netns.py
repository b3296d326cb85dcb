"""Network namespaces for fault tests: N node namespaces and one switch namespace whose bridge
joins them, on a private /24 that exists only inside these namespaces. The root namespace's
networking is never touched.

    switch ns "sgz<pid>x<k>-sw": bridge br0 (CLIENT_ADDRESS), veths n0..n{N-1}
    node ns   "sgz<pid>x<k>-n<i>": eth0 (node_address(i)), lo

The switch namespace is also where clients run (pools, the load driver, CLI commands): it reaches
every node through the bridge, as an application server on the same network would.

Faults are bounded by the kernel itself where it can be: a partition is a set of nftables
elements with a timeout, so it heals on time even if the test process dies. A cut link is put up
again by a timer thread and, at the latest, when the topology is destroyed. ``topology()`` always
destroys what it created: it SIGKILLs the processes still inside its namespaces (only this
topology's children can be there, the names are this process's own) and deletes the namespaces,
which takes their veths, bridge and nftables tables with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from missing_service import fail_missing

T = TypeVar("T")

SUBNET = "10.151.7"
"""The /24 of the test networks: private, and only ever configured inside the namespaces."""
CLIENT_ADDRESS = f"{SUBNET}.254"
PREFIX = "sgz"
NETNS_DIR = Path("/run/netns")
FAULT_TABLE = "sagaz_fault"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count(1)


def node_address(index: int) -> str:
    return f"{SUBNET}.{index + 1}"


def require_netns() -> None:
    """Fail when this machine cannot make network namespaces."""
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    problem = None
    if missing:
        problem = f"missing {', '.join(missing)} (Debian iproute2, nftables)"
    elif os.geteuid() != 0:
        problem = "network namespaces need root"
    if problem is not None:
        fail_missing(f"the network-fault tests cannot run: {problem}")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def _nft(namespace: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=script, text=True,
                   capture_output=True, timeout=10, check=True)


def enter(namespace: str) -> None:
    """Move the calling thread (only it: setns is per thread) into ``namespace``'s network.
    Sockets it opens from then on, and threads it starts, live there."""
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({namespace}): {os.strerror(code)}")
    finally:
        os.close(fd)


def run_in(namespace: str, fn: Callable[[], T], timeout: float = 60.0) -> T:
    """``fn()`` in a fresh thread inside ``namespace``; its result, or its exception."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            enter(namespace)
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, daemon=True, name=f"netns-{namespace}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{fn!r} in {namespace} did not return within {timeout} s")
    if failure:
        raise failure[0]
    return outcome[0]


def tcp_probe(address: str, port: int, timeout: float) -> bool:
    """True when ``address`` answers at all: a listener accepts, or its kernel refuses (RST).
    False when nothing comes back within ``timeout`` (dropped, link down, no route)."""
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return True


@dataclass
class Topology:
    name: str
    size: int
    _cut_timers: dict[int, threading.Timer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def switch(self) -> str:
        """The namespace of the bridge and of every client."""
        return f"{self.name}-sw"

    def namespace(self, index: int) -> str:
        return f"{self.name}-n{index}"

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(self.namespace(i) for i in range(self.size))]

    def address(self, index: int) -> str:
        return node_address(index)

    def prefix(self, index: int | None) -> list[str]:
        """The command prefix that runs a program in node ``index``'s namespace (None: the
        switch namespace, where clients run)."""
        ns = self.switch if index is None else self.namespace(index)
        return ["ip", "netns", "exec", ns]

    # -- building and destroying ---------------------------------------------------------------

    def build(self) -> None:
        _ip("netns", "add", self.switch)
        sw = self.switch
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", "br0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i in range(self.size):
            ns = self.namespace(i)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", sw, "link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", sw, "link", "set", f"n{i}", "master", "br0")
            _ip("-n", sw, "link", "set", f"n{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            # A bridge port forwards only after its link is up on both ends; nothing to wait for.
            _nft(ns, _fault_table())

    def destroy(self) -> None:
        """Stop every process left in these namespaces, then delete them (with their links and
        rules). Safe to call twice and after a partial build."""
        with self._lock:
            for timer in self._cut_timers.values():
                timer.cancel()
            self._cut_timers.clear()
        for ns in self.namespaces:
            if (NETNS_DIR / ns).exists():
                kill_processes_in(ns)
        for ns in self.namespaces:
            if (NETNS_DIR / ns).exists():
                _ip("netns", "delete", ns, check=False)

    # -- checks --------------------------------------------------------------------------------

    def reaches(self, source: int | None, index: int | None, port: int = 9,
                timeout: float = 0.5) -> bool:
        """Whether a TCP connection from ``source``'s namespace gets any answer from node
        ``index`` (None: the switch/client address)."""
        ns = self.switch if source is None else self.namespace(source)
        target = CLIENT_ADDRESS if index is None else self.address(index)
        return run_in(ns, lambda: tcp_probe(target, port, timeout), timeout + 5)

    # -- faults --------------------------------------------------------------------------------

    def partition(self, index: int, seconds: float) -> None:
        """Cut node ``index`` off from the other nodes for ``seconds`` (the kernel lifts it
        then, whatever happens to this process; :meth:`heal` lifts it earlier). The clients in
        the switch namespace still reach it: an isolated leader can still be asked to write."""
        peers = ", ".join(f"{self.address(i)} timeout {max(1, round(seconds))}s"
                          for i in range(self.size) if i != index)
        _nft(self.namespace(index), f"add element inet {FAULT_TABLE} peers {{ {peers} }}\n")

    def heal(self, index: int) -> None:
        """Lift node ``index``'s partition and put its link up again."""
        _nft(self.namespace(index), f"flush set inet {FAULT_TABLE} peers\n")
        self._link_up(index)

    def partitioned_from(self, index: int) -> list[str]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.namespace(index), "nft", "list", "set", "inet",
             FAULT_TABLE, "peers"], capture_output=True, text=True, timeout=10, check=True).stdout
        return [a for a in (node_address(i) for i in range(self.size)) if f"{a} " in out]

    def cut(self, index: int, seconds: float) -> None:
        """Take node ``index``'s link down (nothing reaches it, clients neither) for
        ``seconds``; a timer puts it up again."""
        _ip("-n", self.switch, "link", "set", f"n{index}", "down")
        timer = threading.Timer(seconds, self._link_up, (index,))
        timer.daemon = True
        with self._lock:
            old = self._cut_timers.pop(index, None)
            self._cut_timers[index] = timer
        if old is not None:
            old.cancel()
        timer.start()

    def _link_up(self, index: int) -> None:
        with self._lock:
            timer = self._cut_timers.pop(index, None)
        if timer is not None:
            timer.cancel()
        if (NETNS_DIR / self.switch).exists():
            _ip("-n", self.switch, "link", "set", f"n{index}", "up", check=False)

    @contextlib.contextmanager
    def partitioned(self, index: int, seconds: float) -> Iterator[None]:
        """:meth:`partition` for the block, healed when it ends (or after ``seconds``)."""
        self.partition(index, seconds)
        try:
            yield
        finally:
            self.heal(index)


def _fault_table() -> str:
    # Drops to and from the addresses in @peers; empty until a fault adds (timed) elements.
    return (
        f"table inet {FAULT_TABLE} {{\n"
        "  set peers { type ipv4_addr; flags timeout; }\n"
        "  chain input { type filter hook input priority 0; policy accept; "
        "ip saddr @peers drop; }\n"
        "  chain output { type filter hook output priority 0; policy accept; "
        "ip daddr @peers drop; }\n"
        "}\n")


def pids_in(namespace: str) -> list[int]:
    out = _ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_processes_in(namespace: str, wait: float = 5.0) -> None:
    """SIGKILL, by pid, every process in ``namespace`` (one this process's topology made, so
    only its own children can be there), and wait until they are gone."""
    deadline = time.monotonic() + wait
    while pids := pids_in(namespace):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def _owner_alive(name: str) -> bool:
    # Names are "sgz<pid>x<serial>-...": the creating process's pid.
    head = name[len(PREFIX):].split("x", 1)[0]
    if not head.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(head), 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def remove_orphans() -> None:
    """Delete the namespaces of topologies whose creating test process died before cleaning
    up (a SIGKILLed pytest cannot run its finally blocks)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        if name.startswith(PREFIX) and name[len(PREFIX):len(PREFIX) + 1].isdigit() \
                and not _owner_alive(name):
            kill_processes_in(name)
            _ip("netns", "delete", name, check=False)


@contextlib.contextmanager
def topology(size: int) -> Iterator[Topology]:
    """``size`` node namespaces on one bridge, always destroyed afterwards."""
    require_netns()
    remove_orphans()
    topo = Topology(f"{PREFIX}{os.getpid()}x{next(_serial)}", size)
    try:
        topo.build()
        yield topo
    finally:
        topo.destroy()


def wait_until(check: Callable[[], bool], seconds: float, what: str,
               interval: float = 0.1) -> float:
    """Seconds until ``check()`` held; AssertionError naming ``what`` after ``seconds``."""
    started = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception as exc:  # a check may fail while the cluster is still moving
            last = exc
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: not within {seconds} s (last error: {last!r})")
        time.sleep(interval)
