"""The embedded local AWS: moto in server mode on background threads of this process, Step Functions beside it.

Lambda ``Invoke`` is served in-process by :class:`~localcloud.lambdas.LambdaInvokeMiddleware`. Step Functions
executes definitions for real (moto's ``stepfunctions.execute_state_machine``) in a process of its own
(:mod:`localcloud.executions`), to which this server forwards every Step Functions request; its interpreter's
AWS calls come back here (``MOTO_PORT``). Connections are kept alive for the stack's own processes
(:mod:`localcloud.keepalive`). Both servers answer only requests for their loopback address and port
(:mod:`localcloud.hostguard`: no web page can reach them by rebinding a name of its own).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from localcloud import aslparse, aslwaits, fairqueues, hotpaths, transactions
from localcloud.executions import ExecutionsProcess, StatesForwarder
from localcloud.hostguard import LoopbackHostGuard
from localcloud.keepalive import KeepAliveServer, cache_moto_module_list, moto_request_handler
from localcloud.lambdas import (
    EnvJournal,
    FunctionRef,
    FunctionSpec,
    LambdaInvokeMiddleware,
    moto_function_resolver,
)
from localcloud.provision import (
    DEFAULT_STACK_NAME,
    DUMMY_CREDENTIAL,
    LocalResources,
    provision,
)

LOG = logging.getLogger("sdq.localcloud")
DEFAULT_REGION = "us-east-1"


class LocalCloud:
    """One moto server plus the in-process Lambda runtime; ``provision`` builds the stack from the template.

    moto keeps its state in module globals, so one process holds at most one running LocalCloud, and
    ``stop()`` resets that state. Do not use ``moto.mock_aws`` in the same process while it runs.
    """

    _active: ClassVar[LocalCloud | None] = None

    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = DEFAULT_REGION) -> None:
        self.host = host
        self.requested_port = port
        self.region = region
        self.resources: LocalResources | None = None
        self._server: KeepAliveServer | None = None
        self._thread: threading.Thread | None = None
        self._code_roots: dict[str, Path] = {}
        self._saved_moto_port: str | None = None
        self._saved_sfn_config: Any = None
        self._env_journal = EnvJournal()
        self._executions: ExecutionsProcess | None = None
        self._forwarder: StatesForwarder | None = None

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        if self._server is None:
            raise RuntimeError("LocalCloud is not started")
        return int(self._server.server_port)

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    @classmethod
    def active(cls) -> LocalCloud | None:
        """The LocalCloud running in this process, if any."""
        return cls._active

    @property
    def running(self) -> bool:
        """Whether the server thread is up."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LocalCloud:
        """Bind the server, set ``MOTO_PORT``, turn ASL execution on and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("LocalCloud already started")
        if LocalCloud._active is not None:
            raise RuntimeError(
                f"another LocalCloud is running in this process ({LocalCloud._active.endpoint_url}); "
                "moto's state is process-wide, so provision a second stack on that one instead"
            )
        from moto.core.config import default_user_config
        from moto.moto_api._internal.models import moto_api_backend
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        lambdas = LambdaInvokeMiddleware(
            DomainDispatcherApplication(create_backend_app),
            default_region=self.region,
            resolver=self._resolve_function,
            base_env=self._base_env,
            journal=self._env_journal,
        )
        app = self._forwarder = StatesForwarder(lambdas)
        handler = moto_request_handler()
        # Only requests for this loopback address and port (no page rebinding a name of its own to it).
        guard = LoopbackHostGuard(app, bound_host=self.host)
        self._server = KeepAliveServer(self.host, self.requested_port, guard, handler=handler)
        guard.ports.add(self.port)
        try:
            # Step Functions runs beside this process; its interpreter calls back here.
            self._executions = app.target = ExecutionsProcess(host=self.host, cloud_port=self.port)
        except BaseException:
            self._server.server_close()
            self._server = None
            raise
        self._saved_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self.port)
        self._saved_sfn_config = dict(default_user_config.get("stepfunctions", {}))
        moto_api_backend.set_config({"stepfunctions": {"execute_state_machine": True}})
        transactions.install()
        aslparse.install()
        aslwaits.install()
        hotpaths.install()
        fairqueues.install()  # standard queues hand out messages as SQS fair queues do
        cache_moto_module_list()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sdq-localcloud", daemon=True
        )
        self._thread.start()
        LocalCloud._active = self
        LOG.info("local cloud listening on %s", self.endpoint_url)
        return self

    def provision(
        self,
        template_path: Path = Path("template.yaml"),
        asl_path: Path | None = None,
        *,
        substitutions_override: Mapping[str, str] | None = None,
        retry_override: Mapping[str, Any] | None = None,
        parameters: Mapping[str, str] | None = None,
        stack_name: str = DEFAULT_STACK_NAME,
    ) -> LocalResources:
        """Create the template's stack here; see :func:`localcloud.provision.provision`."""
        if self._server is None:
            raise RuntimeError("start() the LocalCloud before provisioning")
        stack = provision(
            self.endpoint_url,
            self.region,
            template_path,
            asl_path,
            stack_name=stack_name,
            parameters=parameters,
            substitutions_override=substitutions_override,
            retry_override=retry_override,
        )
        self._code_roots.update(stack.code_roots)
        self.resources = stack.resources
        return stack.resources

    def stop(self) -> None:
        """Shut the server down, join its thread, and restore ``MOTO_PORT``, moto's SFN config and the
        environment variables that in-process Lambda invocations set."""
        if self._server is None:
            return
        from moto.moto_api._internal.models import moto_api_backend

        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()  # connections kept open by clients end too: a stopped cloud answers nothing
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        if self._executions is not None:
            self._executions.stop()
            self._executions = None
        self._server = None
        self._thread = None
        if self._saved_moto_port is None:
            os.environ.pop("MOTO_PORT", None)
        else:
            os.environ["MOTO_PORT"] = self._saved_moto_port
        moto_api_backend.set_config({"stepfunctions": self._saved_sfn_config})
        moto_api_backend.reset()
        # In the reverse order of install(): a later patch may wrap an earlier one's method.
        fairqueues.uninstall()
        hotpaths.uninstall()
        aslparse.uninstall()
        aslwaits.uninstall()
        transactions.uninstall()
        self._env_journal.restore()
        self._code_roots.clear()
        self.resources = None
        LocalCloud._active = None
        LOG.info("local cloud stopped")

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _resolve_function(self, ref: FunctionRef) -> FunctionSpec | None:
        spec = moto_function_resolver(ref)
        if spec is None or spec.name not in self._code_roots:
            return spec
        return dataclasses.replace(spec, code_root=self._code_roots[spec.name])

    def _base_env(self) -> dict[str, str]:
        """AWS settings a handler needs to call back into this cloud (applied before its Environment)."""
        if self._server is None:
            return {}
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
        }
