"""The errors a user can fix: bad config, data, weights or artifacts.

``jobs.guarded`` turns a ``UserError`` into one line on stderr and exit status 1; any
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input; the message names the culprit and the fix."""


class ConfigError(UserError):
    """A configuration value is wrong; the message names the key and the fix."""


class DatasetError(UserError):
    """A dataset on disk is missing or malformed; the message names the file and the fix."""


class WeightsError(UserError):
    """A weights file is missing or does not fit the model; the message names the file and the fix."""


class TrainingError(UserError):
    """Training cannot go on; the message says why and what to change."""


class LayerError(UserError):
    """A layer name does not exist in the model; the message lists the valid ones."""


class ArtifactError(UserError):
    """An input artifact (checkpoint, metrics, predictions) is missing, stale or malformed."""


class ReportError(UserError):
    """The report source or its rendering failed; the message names the file and the fix."""
