"""Service settings: environment variables ``LIEPROP_<NAME>`` (e.g. ``LIEPROP_MAX_BATCH_SIZE=32``), overridden by
``lieprop serve`` flags (``--max-batch-size 32``), which pass them as keyword arguments."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lieprop.data.elements import QM9_MAX_ATOMS
from lieprop.data.records import DEFAULT_CONFORMERS
from lieprop.model.loading import default_model_path

#: The tenant of the single ``api_key``, of a server without keys, and of jobs created before tenants existed.
DEFAULT_TENANT = "default"


class Settings(BaseSettings):
    """Everything the service can be told. Field descriptions double as ``--help`` texts and as docs/API.md's table."""

    model_config = SettingsConfigDict(env_prefix="LIEPROP_", extra="ignore", validate_default=True)

    # where and what
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    model: Path = Field(default_factory=default_model_path,
                        description="model bundle to serve (default: the bundled lieprop/models/lieprop-qm9.pt)")
    extra_models: list[Path] = Field(default_factory=list,
                                     description="more model bundles to serve beside `model`, each with its own model "
                                                 "worker; a request chooses one by its name (\"model\": NAME); "
                                                 "batch jobs and the web page use `model`")

    # dynamic batching and the model worker
    batching: bool = Field(True, description="merge concurrent requests' molecules into shared model batches")
    max_batch_size: int = Field(64, ge=1, le=4096, description="molecules per model batch, at most")
    max_wait_ms: float = Field(5.0, ge=0, le=1000,
                               description="how long the first queued molecule may wait for a batch to fill")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the model runs: auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    model_threads: int | None = Field(None, ge=1, le=256,
                                      description="torch threads of the model worker (default: all cores but "
                                                  "one, at least 1: the event loop and the readers need a core)")
    model_process: bool = Field(True, description="run the networks' forward passes in a child process of their "
                                "own (lieprop/service/model_process.py): off the GIL that the event loop and the "
                                "readers share; false: in the model worker thread")
    model_compile: bool = Field(False, description="torch.compile the networks in the model process (dynamic "
                                "shapes): faster forward passes after a start-up of minutes (compiled during warm-up); "
                                "values differ from the uncompiled model by float32 rounding. Needs model_process")
    model_chunk: int = Field(128, ge=1, le=4096,
                             description="frames per forward pass inside a batch (each molecule has 1-8+ frames)")
    max_queue: int = Field(4096 * DEFAULT_CONFORMERS, ge=1,
                           description="model inputs waiting for the model before new requests get 503 (a SMILES "
                                       "counts once per distinct conformer)")

    # ingestion
    workers_embed: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256,
                               description="processes embedding SMILES and 2D MOL blocks in 3D (RDKit)")

    # batch jobs (POST /v1/jobs)
    jobs: bool = Field(True, description="serve batch jobs (/v1/jobs) and run their runner; false: the job routes "
                                         "answer 503 jobs_disabled (replicas: docs/SCALING.md)")
    data_dir: Path = Field(default_factory=lambda: _default_data_dir(),
                           description="where batch jobs keep their state (jobs.sqlite3) and files "
                                       "(default: $XDG_DATA_HOME/lieprop or ~/.local/share/lieprop)")
    max_upload_bytes: int = Field(1 << 30, ge=1024, description="largest job upload; larger -> 413")
    job_workers: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) // 2), ge=1, le=256,
                             description="processes reading and embedding a job's molecules (run at low priority)")
    job_nice: int = Field(10, ge=0, le=19, description="CPU priority steps below normal for the job workers")
    job_chunk_size: int = Field(1000, ge=1, le=100_000,
                                description="rows per committed job chunk (default of the chunk_size option)")
    job_max_rows: int = Field(1_000_000, ge=1, description="input rows a batch job may hold; past it the job "
                                                           "fails naming the limit (its committed rows are kept)")
    job_max_decompressed_bytes: int = Field(4 << 30, ge=1024,
                                            description="bytes a .gz job upload may expand to; past it the job "
                                                        "fails naming the limit")
    job_ttl_hours: float = Field(168.0, ge=0,
                                 description="finished jobs (succeeded, failed, cancelled) and their files are "
                                             "deleted this long after they finished (0: kept for ever)")
    job_sweep_interval_s: float = Field(60.0, gt=0, le=86400,
                                        description="how often expired jobs are looked for (and once at start)")
    job_max_stored_per_tenant: int = Field(1000, ge=0,
                                           description="jobs with files on disk a tenant may hold; a new job past "
                                                       "it gets 429 storage_quota_exceeded (0: no limit)")
    job_max_stored_bytes_per_tenant: int = Field(0, ge=0,
                                                 description="bytes of job inputs and results a tenant may hold; a "
                                                             "new job past it gets 429 storage_quota_exceeded "
                                                             "(0: no limit)")

    # request limits
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body; larger -> 413")
    max_molecules: int = Field(256, ge=1, description="molecules per request; more -> 413")
    max_atoms: int = Field(QM9_MAX_ATOMS, ge=1, le=1000,
                           description="atoms per molecule, hydrogens included; more -> item error too_many_atoms")
    request_timeout_s: float = Field(60.0, gt=0, description="a /v1/predict request taking longer gets 504 (its "
                                                             "work is cancelled)")

    # model time, estimated before any model work (reference milliseconds, lieprop/model/cost.py)
    max_molecule_cost_ms: float = Field(2000.0, gt=0,
                                        description="estimated model time of one molecule (of a SMILES, its "
                                                    "costliest conformer), at most; more -> item error "
                                                    "too_expensive (QM9's costliest: 424)")
    max_request_cost_ms: float = Field(30_000.0, gt=0,
                                       description="estimated model time of one request's molecules (every "
                                                   "conformer counted), at most; the molecules past it -> item "
                                                   "error too_expensive")
    max_batch_cost_ms: float = Field(250.0, gt=0,
                                     description="estimated model time of one model batch, at most; a costlier "
                                                 "molecule runs alone, in forward passes of a tenth of this, "
                                                 "and waiting light requests go between them")

    # connection hygiene (slow and idle clients)
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=3600,
                                        description="an idle kept-alive connection is closed after this long")
    header_timeout_s: float = Field(10.0, gt=0, le=3600,
                                    description="a request's headers must arrive within this long (from the "
                                                "connection's or the request's first byte); else it is closed")
    max_header_bytes: int = Field(65536, ge=4096, le=16 << 20,
                                  description="a request's headers larger than this get 431 and the connection is "
                                              "closed")
    body_timeout_s: float = Field(30.0, gt=0, le=3600,
                                  description="a request body (not a job upload) must arrive within this long; "
                                              "else 408")
    upload_min_rate_bytes_s: int = Field(16384, ge=0,
                                         description="a job upload must average at least this many bytes per "
                                                     "second after its first body_timeout_s; else 408 and the "
                                                     "partial upload is removed (0: no minimum)")
    max_connections: int = Field(200, ge=1, le=100_000,
                                 description="open connections (and requests in progress) at most; a request "
                                             "past it gets 503 (keep well under the file limit, ulimit -n)")

    # security and operations
    api_key: SecretStr | None = Field(None, description="when set, /v1/* and /metrics need header X-API-Key "
                                                        "(the key of tenant 'default')")
    api_keys: SecretStr | None = Field(None, description='more API keys, each a tenant: a JSON map {"key": "tenant"}; '
                                                         "a tenant sees only its own batch jobs")
    api_keys_file: Path | None = Field(None, description="a file of more API keys, one 'tenant:key' line each "
                                                         "(# comments)")
    admin_tenant: str = Field("admin", min_length=1,
                              description="the tenant whose keys see and may delete every tenant's batch jobs")
    cors_origins: list[str] = Field(default_factory=list,
                                    description="origins allowed by CORS (JSON list in the environment); none: off")
    log_level: str = Field("info", description="debug, info, warning or error")
    log_json: bool = Field(True, description="JSON log lines (false: plain text)")
    shutdown_timeout_s: float = Field(30.0, ge=0,
                                      description="on SIGTERM, how long in-flight requests may take to finish")
    switch_interval_ms: float = Field(1.0, gt=0, le=100,
                                      description="lieprop serve: the interpreter's thread switch interval "
                                                  "(sys.setswitchinterval; Python's default is 5): shorter lets the "
                                                  "event loop and the model thread take the interpreter lock sooner "
                                                  "from threads reading large requests")
    warmup: bool = Field(True, description="run the model and the embedding pool once before /readyz says ready")

    @model_validator(mode="after")
    def _keys_are_valid(self) -> Settings:
        self.tenant_keys()  # a malformed api_keys / api_keys_file stops start-up with the reason
        if self.model_compile and not self.model_process:
            raise ValueError("model_compile compiles the networks in the model process: it needs model_process")
        return self

    def tenant_keys(self) -> list[tuple[bytes, str]]:
        """Every API key with its tenant: ``api_key`` (tenant ``default``), ``api_keys`` and ``api_keys_file``.
        Empty: no key is needed. Raises ValueError on a malformed map or file, an empty key or tenant, or a key given
        to two tenants."""
        pairs: list[tuple[str, str]] = []
        if self.api_key is not None:
            pairs.append((self.api_key.get_secret_value(), DEFAULT_TENANT))
        if self.api_keys is not None:
            try:
                mapping = json.loads(self.api_keys.get_secret_value())
            except json.JSONDecodeError as exc:
                raise ValueError(f"api_keys is not a JSON map of key to tenant: {exc.msg}") from None
            if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
                raise ValueError('api_keys must be a JSON map of key to tenant name, e.g. {"k3y": "alice"}')
            pairs.extend(mapping.items())
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read api_keys_file {self.api_keys_file}: {exc.strerror}") from None
            for n, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                tenant, sep, key = line.partition(":")
                if not sep:
                    raise ValueError(f"{self.api_keys_file}:{n}: expected a 'tenant:key' line")
                pairs.append((key.strip(), tenant.strip()))
        tenants: dict[str, str] = {}
        for key, tenant in pairs:
            if not key or not tenant:
                raise ValueError("an API key and its tenant name must not be empty")
            if tenants.setdefault(key, tenant) != tenant:
                raise ValueError(f"one API key is given to two tenants ({tenants[key]!r} and {tenant!r})")
        return [(key.encode(), tenant) for key, tenant in tenants.items()]


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "lieprop"


class ReplicaSettings(BaseSettings):
    """How many replicas and what each gets. Field descriptions double as ``lieprop serve-ray --help`` texts."""

    model_config = SettingsConfigDict(env_prefix="LIEPROP_RAY_", extra="ignore")

    replicas: int = Field(1, ge=1, le=1024, description="replicas (each with its own model and batcher) when "
                                                        "not autoscaling")
    min_replicas: int | None = Field(None, ge=0, le=1024, description="autoscaling: fewest replicas (with "
                                                                      "max_replicas)")
    max_replicas: int | None = Field(None, ge=1, le=1024, description="autoscaling: most replicas; setting it "
                                                                      "turns autoscaling on")
    target_ongoing_requests: float = Field(4.0, gt=0, description="autoscaling: requests in flight per replica "
                                                                  "to aim for")
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica (also its default torch "
                                                   "threads and embedding workers)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica (default: 1 when the cluster has "
                                                           "GPUs, else 0; fractions share a GPU)")
    address: str | None = Field(None, description="Ray cluster to join (e.g. auto, ray://head:10001); default: "
                                                  "start a local Ray with every core")

    @model_validator(mode="after")
    def _autoscaling_is_consistent(self) -> ReplicaSettings:
        if self.min_replicas is not None and self.max_replicas is None:
            raise ValueError("min_replicas needs max_replicas (autoscaling is on when max_replicas is set)")
        if self.max_replicas is not None and (self.min_replicas or 0) > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None
