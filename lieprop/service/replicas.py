"""Serving replicas on Ray Serve: the same FastAPI app (:func:`lieprop.service.app.create_app`) in N processes.

Each replica is a Ray actor that builds the app itself and runs its lifespan, so it has everything a plain
``lieprop serve`` has (its own model, dynamic batcher, embedding pool, metrics, edge middleware and error bodies);
Ray Serve's HTTP proxy spreads requests over the replicas. ``lieprop serve-ray`` starts it (docs/SCALING.md).

- Replica count: fixed (``replicas``) or autoscaled between ``min_replicas`` and ``max_replicas`` on the requests in
  flight per replica (``target_ongoing_requests``): :class:`lieprop.service.settings.ReplicaSettings` (flags or
  ``LIEPROP_RAY_*``).
- Devices: each replica asks Ray for ``num_gpus`` GPUs, by default one when the cluster has GPUs and none otherwise
  (decided at start, :func:`deployment_options`); the app's ``device=auto`` then picks the GPU Ray gave it.
- Jobs: replicas run with ``jobs=false`` (the job routes answer 503 ``jobs_disabled``). A job database has one
  runner; several replicas would each resume and run the same jobs. Jobs go to one plain ``lieprop serve``.
- Health: Ray calls each replica's ``check_health``; a replica whose start-up or warm-up failed is restarted.

Ray is optional (``pip install 'lieprop[ray]'``); it is imported only when a deployment is built.
"""

from __future__ import annotations

import math
import os
from typing import Any

from lieprop.service.app import create_app
from lieprop.service.logs import configure_logging
from lieprop.service.settings import ReplicaSettings, Settings
from lieprop.service.state import default_model_threads

#: The Ray Serve application's name.
APP_NAME = "lieprop"


def replica_settings(settings: Settings, replicas: ReplicaSettings) -> Settings:
    """The app settings every replica runs with: ``jobs`` off, and unless set explicitly, torch threads and
    embedding workers sized to the replica's CPUs (not to the whole machine's cores, which replicas share): the
    model gets all of them but one, as in a plain server (:func:`~lieprop.service.state.default_model_threads`)."""
    cpus = max(1, math.floor(replicas.num_cpus))
    given = settings.model_fields_set
    update: dict[str, Any] = {"jobs": False}
    if "model_threads" not in given:
        update["model_threads"] = default_model_threads(cpus)
    if "workers_embed" not in given:
        update["workers_embed"] = cpus
    return settings.model_copy(update=update)


def deployment_options(replicas: ReplicaSettings, cluster_gpus: float) -> dict[str, Any]:
    """``serve.deployment`` options: the replica count or autoscaling config, and each replica's CPUs and GPUs
    (``num_gpus`` by default 1 when ``cluster_gpus`` > 0)."""
    gpus = replicas.num_gpus if replicas.num_gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": replicas.num_cpus, "num_gpus": gpus},
                               "health_check_period_s": 10, "health_check_timeout_s": 30}
    if replicas.autoscaling:
        options["autoscaling_config"] = {"min_replicas": replicas.min_replicas or 0,
                                         "initial_replicas": max(1, replicas.min_replicas or 0),
                                         "max_replicas": replicas.max_replicas,
                                         "target_ongoing_requests": replicas.target_ongoing_requests}
    else:
        options["num_replicas"] = replicas.replicas
    return options


#: The app of this process (a replica builds exactly one), for the replica's health check.
_APP: Any = None


class OneRequestIdHeader:
    """ASGI middleware that drops the app's ``X-Request-ID`` answer header: Ray Serve's proxy adds one to every answer
    (the id it passed in, which the edge takes as the request's id), so the client gets it once, as from
    ``lieprop serve``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_once(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_once)


def build_replica_app(settings: Settings) -> Any:
    """Build the FastAPI app inside a replica (Ray calls this there; the lifespan then starts its Service)."""
    global _APP
    configure_logging(settings.log_level, settings.log_json)
    _APP = create_app(settings)
    _APP.add_middleware(OneRequestIdHeader)  # outermost
    return _APP


def replica_health() -> None:
    """Raise when this replica's service failed to start or warm up (Ray then replaces the replica)."""
    service = getattr(getattr(_APP, "state", None), "service", None)
    if service is not None and service.state == "failed":
        raise RuntimeError(f"lieprop replica failed: {service.detail}")


def build_deployment(settings: Settings, replicas: ReplicaSettings, cluster_gpus: float) -> Any:
    """The Ray Serve application: the lieprop app as an ingress deployment with :func:`deployment_options`."""
    from ray import serve

    app_settings = replica_settings(settings, replicas)

    def builder() -> Any:  # a plain function: Ray Serve calls it in each replica (a partial would pass as an app)
        return build_replica_app(app_settings)

    @serve.deployment(name="lieprop", **deployment_options(replicas, cluster_gpus))
    @serve.ingress(builder)
    class LiepropReplica:
        """One replica: the app built by :func:`build_replica_app` in this actor."""

        def check_health(self) -> None:
            replica_health()

    return LiepropReplica.bind()


def start(settings: Settings, replicas: ReplicaSettings) -> dict[str, Any]:
    """Start (or join) Ray, start Serve's HTTP proxy on ``settings.host:port`` and deploy the replicas; returns once
    they run, with the replica count by state. Stop with :func:`stop`."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        quiet = {"log_to_driver": True, "logging_level": "WARNING"}
        if replicas.address is None:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:
            ray.init(address=replicas.address, **quiet)
    serve.start(http_options={"host": settings.host, "port": settings.port,
                              "keep_alive_timeout_s": settings.keep_alive_timeout_s})
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    serve.run(build_deployment(settings, replicas, gpus), name=APP_NAME, route_prefix="/")
    return replica_states()


def replica_states() -> dict[str, int]:
    """Replicas of the lieprop deployment by state (``{"RUNNING": 2}``)."""
    from ray import serve

    app = serve.status().applications[APP_NAME]
    return {str(state): int(n) for deployment in app.deployments.values()
            for state, n in deployment.replica_states.items()}


def stop() -> None:
    """Shut the replicas and the proxy down (each replica's lifespan drains its batcher), then leave Ray."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
