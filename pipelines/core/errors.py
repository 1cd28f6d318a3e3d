"""The two ways a command ends on a user's mistake, without a traceback (the CLI maps them to exits)."""


class StepFailed(RuntimeError):
    """A step could not finish; the message says which step and why. `vcla` exits 1."""


class UsageError(ValueError):
    """A command-line argument that cannot work (a missing --image, an unknown --stage); `vcla` exits 2."""
