"""The one exception type for a user's mistake (bad config value, missing path)."""


class SFDConfigError(ValueError):
    """A user-supplied value is invalid; the message names the value and what is allowed."""
