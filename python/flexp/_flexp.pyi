"""Type stubs of the Rust extension (flexp._flexp)."""

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

Config = Union[Mapping[str, Any], str, "os.PathLike[str]"]
PathLike = Union[str, "os.PathLike[str]"]

__version__: str

class Model:
    """A loaded model: encoders embed, decoders score and generate (CPU backend)."""

    @staticmethod
    def load(path: PathLike) -> "Model":
        """Loads a checkpoint folder (safetensors + config.json + tokenizer.json) or a .gguf file."""
    @property
    def path(self) -> str: ...
    @property
    def is_decoder(self) -> bool: ...
    def embed(
        self, texts: Sequence[str], normalize: Optional[bool] = None
    ) -> npt.NDArray[np.float32]:
        """Sentence embeddings, shape (len(texts), hidden), pooled as the checkpoint says."""
    def score(self, texts: Sequence[str], top_k: int = 10) -> List[Dict[str, Any]]:
        """Per text: {"tokens", "mean_log_likelihood", "top_k": [[id, logit], ...]}."""
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str:
        """The continuation of prompt: greedy at temperature 0, else sampled with seed."""

def train(
    config: Config,
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    resume: bool = False,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Runs an experiment; returns its report (report.json).

    progress is called after each round with {"round", "rounds", "train_loss", "metrics"}.
    Ctrl-C (or an exception in progress) stops the run after the round in progress, with a
    checkpoint; train(run_dir, resume=True) continues it.
    """

def plan(config: Config) -> Dict[str, Any]:
    """The split plan: per client its profile, split, predicted memory and step latency."""

class Server:
    """The FlexP-SFL server of a deployment (flexp-run serve)."""

    def __init__(
        self,
        config: Config,
        listen: str,
        tls: PathLike,
        out: Optional[PathLike] = None,
        wire: str = "f32",
        step_deadline: float = 60.0,
        join_timeout: float = 300.0,
        max_message_mb: int = 256,
        resume: bool = False,
        verbose: bool = False,
        partition: Optional[PathLike] = None,
        gated: bool = False,
    ) -> None:
        """partition: a flexp.partition folder; the server then reads only its manifest and
        global_test.csv, never the clients' rows. gated: each round waits for next_round()."""
    @property
    def rounds(self) -> int: ...
    @property
    def clients(self) -> int: ...
    def next_round(self) -> Dict[str, Any]:
        """Runs the next round of a started gated server: round, participants, completed,
        train_loss, metrics (the metrics.jsonl line at evaluation rounds)."""
    def run(self) -> Dict[str, Any]:
        """Serves the run to its end; returns the report."""
    def start(self) -> None:
        """Serves in a background thread."""
    def wait(self) -> Dict[str, Any]:
        """Waits for a started server; returns the report."""

class Client:
    """One client of a deployment (flexp-run client)."""

    def __init__(
        self,
        connect: str,
        tls: PathLike,
        id: int,
        data: PathLike,
        global_test: Optional[PathLike] = None,
        model: Optional[PathLike] = None,
        server_name: str = "localhost",
        wire: str = "f32",
        timeout: float = 600.0,
        max_message_mb: int = 256,
        verbose: bool = False,
    ) -> None: ...
    def run(self) -> Dict[str, Any]:
        """Takes part until the server finishes the run."""
    def start(self) -> None:
        """Runs in a background thread."""
    def wait(self) -> Dict[str, Any]:
        """Waits for a started client."""

def certs(out: PathLike, clients: int) -> None:
    """Writes trial certificates: ca.pem, server.pem/.key, client-K.pem/.key for K < clients."""

def partition(config: Config, out: PathLike) -> Dict[str, Any]:
    """Writes client-K.csv and global_test.csv as the simulation splits the data; the manifest."""
