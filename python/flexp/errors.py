"""The exceptions flexp raises.

Each is a :class:`FlexpError` and also the built-in exception a caller would catch for that kind
of problem, so ``except ValueError`` or ``except OSError`` work as they do elsewhere. The message
is the engine's, naming the file, key or value at fault.
"""


class FlexpError(Exception):
    """Base class of every error flexp raises."""


class InputError(FlexpError, ValueError):
    """A value the run cannot use: a configuration key, a data file's contents, an argument."""


class ConfigTypeError(FlexpError, TypeError):
    """A configuration value of a Python type TOML cannot hold, or an argument of the wrong type."""


class ModelError(FlexpError, ValueError):
    """A checkpoint, GGUF file or tokenizer that cannot be loaded or does not fit the request."""


class FileError(FlexpError, OSError):
    """A file or folder that cannot be read or written."""


class NetworkError(FlexpError, ConnectionError):
    """A deployment's connection failed, or a peer refused it."""


class BackendError(FlexpError, RuntimeError):
    """The compute backend failed."""


class Interrupted(FlexpError, RuntimeError):
    """A run stopped after a whole round because it was asked to; it can be resumed."""


__all__ = [
    "FlexpError",
    "InputError",
    "ConfigTypeError",
    "ModelError",
    "FileError",
    "NetworkError",
    "BackendError",
    "Interrupted",
]
