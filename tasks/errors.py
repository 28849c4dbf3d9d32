"""User-facing errors: the CLI turns these into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (params, data, a name): never a traceback."""

    exit_code = 2


class ParamsError(UserError):
    """A key or value in params.yaml or an `-S` override is wrong."""


class DataError(UserError):
    """The dataset is unreadable, malformed or fails a blocking check."""
