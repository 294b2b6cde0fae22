"""The one exception that means "bad configuration value"."""


class ConfigError(ValueError):
    """A value a constructor or the run refuses: reported in one line naming the key, before any
    work (``train.py`` exits 2). Constructors raise it for arguments they validate; any other
    exception from a constructor is a bug and keeps its traceback."""
