"""Errors that mean "the run was configured wrongly", as opposed to bugs.

``main.py`` turns a :class:`ConfigError` into one readable line on stderr and exit code 2 (the
same code argparse uses), so a typo in a sweep never ends in a traceback.
"""


class ConfigError(ValueError):
    """A flag value, flag combination or on-disk layout that cannot work."""


class TrainingDiverged(ConfigError):
    """Non-finite embeddings or loss during training: the run stops with one line that says
    where, what to change and which checkpoint holds the last good state."""
