"""Errors of the P2P network a user can fix (kept free of hivemind imports, so the engine can
name them without loading hivemind)."""


class PeerNetworkError(RuntimeError):
    """This machine could not join the DHT: wrong addresses, unreachable peers, a taken identity."""
