"""Service settings: environment variables ``LIEPROP_<NAME>`` (e.g. ``LIEPROP_MAX_BATCH_SIZE=32``), overridden by
``lieprop serve`` flags (``--max-batch-size 32``), which pass them as keyword arguments."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lieprop.data.elements import QM9_MAX_ATOMS
from lieprop.model.loading import default_model_path


class Settings(BaseSettings):
    """Everything the service can be told. Field descriptions double as ``--help`` texts and as docs/API.md's table."""

    model_config = SettingsConfigDict(env_prefix="LIEPROP_", extra="ignore", validate_default=True)

    # where and what
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    model: Path = Field(default_factory=default_model_path,
                        description="model bundle to serve (default: the bundled lieprop/models/lieprop-qm9.pt)")

    # dynamic batching and the model worker
    batching: bool = Field(True, description="merge concurrent requests' molecules into shared model batches")
    max_batch_size: int = Field(64, ge=1, le=4096, description="molecules per model batch, at most")
    max_wait_ms: float = Field(5.0, ge=0, le=1000,
                               description="how long the first queued molecule may wait for a batch to fill")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the model runs: auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    model_threads: int | None = Field(None, ge=1, le=256,
                                      description="torch threads of the model worker (default: all cores)")
    model_chunk: int = Field(128, ge=1, le=4096,
                             description="frames per forward pass inside a batch (each molecule has 1-8+ frames)")
    max_queue: int = Field(4096, ge=1, description="molecules waiting for the model before new requests get 503")

    # ingestion
    workers_embed: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256,
                               description="processes embedding SMILES and 2D MOL blocks in 3D (RDKit)")

    # batch jobs (POST /v1/jobs)
    data_dir: Path = Field(default_factory=lambda: _default_data_dir(),
                           description="where batch jobs keep their state (jobs.sqlite3) and files "
                                       "(default: $XDG_DATA_HOME/lieprop or ~/.local/share/lieprop)")
    max_upload_bytes: int = Field(1 << 30, ge=1024, description="largest job upload; larger -> 413")
    job_workers: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) // 2), ge=1, le=256,
                             description="processes reading and embedding a job's molecules (run at low priority)")
    job_nice: int = Field(10, ge=0, le=19, description="CPU priority steps below normal for the job workers")
    job_chunk_size: int = Field(1000, ge=1, le=100_000,
                                description="rows per committed job chunk (default of the chunk_size option)")

    # request limits
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body; larger -> 413")
    max_molecules: int = Field(256, ge=1, description="molecules per request; more -> 413")
    max_atoms: int = Field(QM9_MAX_ATOMS, ge=1, le=1000,
                           description="atoms per molecule, hydrogens included; more -> item error too_many_atoms")
    request_timeout_s: float = Field(60.0, gt=0, description="a /v1/predict request taking longer gets 504")

    # security and operations
    api_key: SecretStr | None = Field(None, description="when set, /v1/* and /metrics need header X-API-Key")
    cors_origins: list[str] = Field(default_factory=list,
                                    description="origins allowed by CORS (JSON list in the environment); none: off")
    log_level: str = Field("info", description="debug, info, warning or error")
    log_json: bool = Field(True, description="JSON log lines (false: plain text)")
    shutdown_timeout_s: float = Field(30.0, ge=0,
                                      description="on SIGTERM, how long in-flight requests may take to finish")
    warmup: bool = Field(True, description="run the model and the embedding pool once before /readyz says ready")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "lieprop"
