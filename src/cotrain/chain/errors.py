"""The chain's own error for an operation that cannot be done as asked (settings, keys, sign-in and payouts
have theirs: ChainConfigError, KeyConfigError, SignInError, PayoutError)."""


class ChainError(Exception):
    """A chain operation cannot be done as asked; the message says why and what to do."""


class RewardsUnavailable(ChainError):
    """This server cannot keep reward pools or sign wallet tokens now (its ledger key cannot be loaded);
    the server answers 503."""
