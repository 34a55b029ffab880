"""Runs the whole service on one machine: local cloud (this process, with Step Functions in a process beside it:
:mod:`localcloud.executions`), REST API on 127.0.0.1 (processes of its own, :mod:`localcloud.apiprocess`) and a
worker process.

Used by ``sdq up`` (until Ctrl-C), ``sdq demo`` and the integration tests.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cli.client import LOCAL_STATE_FILE, state_dir
from localcloud import LocalCloud, LocalResources
from localcloud.apiprocess import default_api_processes
from localcloud.keepalive import KEEP_ALIVE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "template.yaml"
ASL = REPO_ROOT / "statemachine.asl.json"

# The local profile compresses the state machine's retry schedule so failures resolve in seconds.
LOCAL_RETRY = {"IntervalSeconds": 1, "BackoffRate": 1.5, "MaxDelaySeconds": 4}
# ... and runs scheduled functions (the requeue sweeper's minute) every few seconds.
LOCAL_SCHEDULE_S = 5.0


@dataclass
class LocalServiceConfig:
    host: str = "127.0.0.1"
    api_port: int = 8000
    cloud_port: int = 0
    with_worker: bool = True
    model: str = "tiny"
    extra_models: tuple[str, ...] = ()  # more models the local worker loads beside ``model`` (the API's default)
    api_key: str | None = None
    tenant: str = "local-dev"
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)  # on top of extra_env, for the worker only
    worker_log: IO[Any] | None = None
    write_state: bool = True
    api_processes: int = field(default_factory=default_api_processes)
    # How long the local gateway reuses the authorizer's answer per key; None: the template's default.
    authorizer_cache_s: int | None = None
    # The worker's scheduling niceness (``nice``): on a machine of few cores its generation yields the CPU to the
    # local cloud and the API, so that submits and reads are answered while it generates (0: equal footing).
    worker_nice: int = 10


@dataclass
class LocalService:
    """A running local deployment; ``stop()`` tears it down."""

    config: LocalServiceConfig
    cloud: LocalCloud
    resources: LocalResources
    api_url: str
    api_key: str
    env: dict[str, str]
    _api_server: Any = None
    _event_pollers: tuple[Any, ...] = ()
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(
        self, *, env: dict[str, str] | None = None, module: str = "handlers.worker"
    ) -> subprocess.Popen[bytes]:
        """Start one worker process (the container's command, ``python -m handlers.worker``) on this local cloud."""
        # The worker's math threads leave a core to the local cloud and the API (unless the caller sets them).
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) - 1))}
        proc_env = {**threads, **os.environ, **self.env, **self.config.worker_env, **(env or {})}
        # Its AWS clients live as long as it does: the cloud keeps their connections open between calls.
        proc_env = {**KEEP_ALIVE_ENV, **proc_env}
        out = self.config.worker_log
        nice = self.config.worker_nice
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=proc_env,
            cwd=str(REPO_ROOT),
            stdout=out or None,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        if self._api_server is not None:
            self._api_server.stop()
        for poller in self._event_pollers:
            poller.stop()
        self.cloud.stop()


def service_env(resources: LocalResources, config: LocalServiceConfig) -> dict[str, str]:
    """The environment of the local API, task Lambdas and worker: the provisioned resources, then the local
    profile's defaults unless the caller's environment sets them, then ``config.extra_env``."""
    defaults = {
        "SDQ_ALLOW_LOOPBACK_CALLBACKS": "true",
        # Only the models the local worker loads: a request for another is refused (422), never run with these.
        "SDQ_MODELS": json.dumps([config.model, *config.extra_models]),
        "SDQ_DEFAULT_MODEL": config.model,
        "SDQ_MODEL": ",".join([config.model, *config.extra_models]),
        "SDQ_REQUEUE_AFTER_S": "15",
        # A stopping worker lets its open long poll return first (so no message handed to it stays hidden): a
        # shorter poll than SQS's 20 s keeps Ctrl-C quick; a job still arrives the moment it is sent.
        "SDQ_RECEIVE_WAIT_S": "5",
        # No fleet scales up here: a job queued while no worker runs (`--no-worker`) waits for one started by hand.
        "SDQ_FLEET_SCALES_FROM_ZERO": "false",
        # The webhook retry schedule in seconds instead of hours, like the compressed ASL retries above.
        "SDQ_WEBHOOK_RETRY_SCHEDULE_S": "[1, 1, 1, 2, 2, 3, 3]",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "sdq",
    }
    env = dict(resources.as_env())
    env.update({k: os.environ.get(k, v) for k, v in defaults.items()})
    if config.authorizer_cache_s is not None:  # the gateway's cache period, which a stream's key re-read follows
        env["SDQ_AUTHORIZER_CACHE_S"] = str(config.authorizer_cache_s)
    env.update(config.extra_env)
    return env


def quiet_local_logs() -> None:
    """Per-request access lines and the ASL interpreter's expected-path errors (an absent optional field in a
    Choice, a caught Lambda error) drown out what matters locally; executions keep their full history."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)


def start_local_service(config: LocalServiceConfig) -> LocalService:
    """Bring everything up and return once the API answers. The caller must ``stop()`` it."""
    quiet_local_logs()
    from localcloud.apiprocess import ApiProcesses
    from localcloud.eventsources import ExecutionStatusPoller, SchedulePoller, SqsEventSourcePoller, local_client
    from localcloud.gateway import GatewayRules
    from shared.apikeys import ApiKeyStore
    from shared.errors import TenantExists
    from shared.tenants import TenantStore

    # Started first: the API processes import the handler while the cloud starts and is provisioned.
    api_server = ApiProcesses(host=config.host, port=config.api_port, count=config.api_processes)
    cloud = LocalCloud(host=config.host, port=config.cloud_port)
    event_pollers: tuple[Any, ...] = ()
    try:
        cloud.start()
        resources = cloud.provision(template_path=TEMPLATE, asl_path=ASL, retry_override=dict(LOCAL_RETRY))
        env = service_env(resources, config)
        os.environ.update(env)
        from shared.settings import get_settings

        get_settings.cache_clear()
        ddb = local_client(resources, "dynamodb")
        with contextlib.suppress(TenantExists):  # a restart on a fixed cloud port keeps the cloud's tables
            TenantStore(ddb, resources.table_name, get_settings()).create(config.tenant, name="local development")
        api_key = (
            ApiKeyStore(ddb, resources.table_name)
            .create(config.tenant, api_key=config.api_key, name="local development key")
            .plaintext
        )
        cache = {} if config.authorizer_cache_s is None else {"AuthorizerCacheSeconds": str(config.authorizer_cache_s)}
        gateway = GatewayRules.from_template(TEMPLATE, cache)
        # The API processes' AWS clients live as long as they do: the cloud keeps their connections open.
        api_server.serve({**KEEP_ALIVE_ENV, **env}, redirects={"/": "/playground/"}, gateway=gateway)
        event_pollers = (
            SqsEventSourcePoller(resources),
            SchedulePoller(resources, every_s=LOCAL_SCHEDULE_S),
            ExecutionStatusPoller(resources),
        )
        for poller in event_pollers:
            poller.start()
    except BaseException:
        for poller in event_pollers:
            poller.stop()
        api_server.stop()
        cloud.stop()
        raise
    server = api_server
    service = LocalService(
        config=config, cloud=cloud, resources=resources, api_url=server.url, api_key=api_key, env=env
    )
    service._api_server = server
    service._event_pollers = event_pollers
    try:
        if config.write_state:
            _write_state(server.url, api_key, config.tenant, env)
        if config.with_worker:
            service.worker = service.start_worker()
    except BaseException:
        service.stop()  # the cloud, the API processes, the pollers and a worker already started
        raise
    # Everything imported and provisioned so far lives as long as the stack: out of the collector's full passes,
    # which otherwise stop every request of the local cloud for longer the more modules are loaded.
    gc.freeze()
    return service


def _write_state(api_url: str, api_key: str, tenant: str, env: dict[str, str]) -> None:
    """``.sdq/local.json``: where the API is and its key, for the CLI; written atomically, since tests and the CLI
    poll for this file to know the service is up."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / LOCAL_STATE_FILE
    record = {"api_url": api_url, "api_key": api_key, "tenant": tenant, "env": env, "pid": os.getpid()}
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.chmod(0o600)
    tmp.replace(state)


# A worker that fails is started again, as ECS replaces a failed task, at most this many times in this many seconds
# (a worker that cannot start at all, a missing GPU say, is then left down and said so).
WORKER_RESTARTS = 3
WORKER_RESTART_WINDOW_S = 600.0
STOPPED_ON_PURPOSE = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


def wait_forever(service: LocalService) -> None:
    """Block until Ctrl-C. A worker that exits non-zero (killed, a stalled pipeline call, a faulty device) is
    started again, as ECS would, within limits; one that stops cleanly (exit 0) and an API process that died are
    reported."""
    reported = False
    api_dead = 0
    restarts: list[float] = []
    while True:
        time.sleep(1.0)
        if service.worker is not None and service.worker.poll() is not None and not reported:
            code = service.worker.returncode
            print(f"worker exited with code {code}", file=sys.stderr)
            now = time.monotonic()
            restarts = [at for at in restarts if at > now - WORKER_RESTART_WINDOW_S]
            # Exit 0 is a warm stop, and a worker stopped by a signal sent from outside was stopped on purpose.
            if code not in STOPPED_ON_PURPOSE and len(restarts) < WORKER_RESTARTS:
                print("starting another worker, as ECS replaces a failed one", file=sys.stderr)
                restarts.append(now)
                service.worker = service.start_worker()
            else:
                reported = True
                if code not in STOPPED_ON_PURPOSE:
                    print(
                        f"not restarting it: {len(restarts)} restarts in {WORKER_RESTART_WINDOW_S:.0f} s",
                        file=sys.stderr,
                    )
        dead = service._api_server.dead() if service._api_server is not None else []
        if len(dead) > api_dead:
            print(f"an API process exited with code {dead[-1]}", file=sys.stderr)
            api_dead = len(dead)
