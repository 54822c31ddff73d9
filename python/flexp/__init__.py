"""flexp: personalized split federated fine-tuning of foundation models.

The engine is written in Rust; this package calls it in-process. Every call that computes
releases the GIL.

- :class:`Model`: a checkpoint folder or ``.gguf`` file to embed, score or generate with.
- :func:`train`: runs an experiment from a configuration (a dict with the TOML file's keys, or a
  path to one) and returns its report; :func:`plan` shows the split plan without training.
- :class:`Server` and :class:`Client`: the two roles of a deployment over mutual TLS;
  :func:`certs` writes trial certificates and :func:`partition` each client's rows.
- :mod:`flexp.errors`: what is raised, each a :class:`FlexpError`.
"""

from . import errors
from ._flexp import Client, Model, Server, __version__, certs, partition, plan, train
from .errors import (
    BackendError,
    ConfigTypeError,
    FileError,
    FlexpError,
    InputError,
    Interrupted,
    ModelError,
    NetworkError,
)

__all__ = [
    "Model",
    "train",
    "plan",
    "Server",
    "Client",
    "certs",
    "partition",
    "errors",
    "FlexpError",
    "InputError",
    "ConfigTypeError",
    "ModelError",
    "FileError",
    "NetworkError",
    "BackendError",
    "Interrupted",
    "__version__",
]
