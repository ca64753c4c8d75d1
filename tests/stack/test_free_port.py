"""Ports chosen for the processes a stack or a test starts."""

from services.stack.processes import free_port


def test_free_port_never_hands_out_a_port_twice():
    # A thousand probes of the ephemeral range: the kernel offers some port again far
    # sooner than that (it did within the 25 ports of one stack).
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
