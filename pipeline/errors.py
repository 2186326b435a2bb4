"""The one error type for input that cannot work (a leaf module: config, models and growth all raise it)."""


class ConfigError(ValueError):
    """A recipe, override, DeepSpeed JSON or input file that cannot work. The message names the fix."""
