"""The Step Functions process's entry point (``python -m localcloud.executionsprocess HOST``): a moto server for
Step Functions alone, with execution on; see :mod:`localcloud.executions`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from localcloud.executions import READY, carry_trace_headers


def _exit_when_orphaned() -> None:
    """The parent closed our stdin (stop, or it died): nothing else will stop us."""
    sys.stdin.read()
    os._exit(0)


def main(host: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
    from moto.moto_api._internal.models import moto_api_backend
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from localcloud import aslparse, aslwaits
    from localcloud.hostguard import LoopbackHostGuard
    from localcloud.keepalive import KeepAliveServer, cache_moto_module_list, moto_request_handler

    moto_api_backend.set_config({"stepfunctions": {"execute_state_machine": True}})
    aslparse.install()
    aslwaits.install()
    carry_trace_headers()
    cache_moto_module_list()
    # The local cloud forwards its Step Functions requests with their Host (its own port) unchanged.
    guard = LoopbackHostGuard(
        DomainDispatcherApplication(create_backend_app), bound_host=host, ports=[int(os.environ["MOTO_PORT"])]
    )
    server = KeepAliveServer(host, 0, guard, handler=moto_request_handler(), keep_alive_for_all=True)
    guard.ports.add(server.server_port)
    threading.Thread(target=_exit_when_orphaned, name="orphan-watch", daemon=True).start()
    print(f"{READY} {server.server_port}", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1")
