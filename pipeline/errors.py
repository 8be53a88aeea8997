"""Errors a user can act on. Stage entry points print them without a traceback."""


class PipelineError(RuntimeError):
    """Bad input data, missing upstream outputs, or mismatched artefacts; the message says what to do."""


class DataSourceError(PipelineError):
    """An image source is missing, unreadable or has too many bad files."""


class ShardError(PipelineError):
    """A token shard violates the shard contract; the message names the shard."""
