"""find_free_base_port: the base port of a local cluster is one under which every port the
cluster listens on is free, found on a machine where other servers hold ports; and
kernel_chosen_port, the port of one server we start next."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sagaz.ha.addresses import find_free_base_port, kernel_chosen_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_base_whose_ports_are_held_is_passed_over(taken_port: int) -> None:
    def addresses(base: int) -> list[tuple[str, int]]:
        # Odd bases would need the held port; even ones only ports the kernel picks free.
        return [("127.0.0.1", 0), ("127.0.0.1", taken_port if base % 2 else 0)]

    base = find_free_base_port(40000, 1, addresses)
    assert base % 2 == 0
    assert 40000 <= base < 43001


def test_no_free_base_is_an_error_that_says_so(taken_port: int) -> None:
    with pytest.raises(RuntimeError, match="no free loopback ports"):
        find_free_base_port(40000, 1000, lambda base: [("127.0.0.1", taken_port)])


def test_a_kernel_chosen_port_can_be_listened_on() -> None:
    port = kernel_chosen_port()
    assert 0 < port < 65536
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
