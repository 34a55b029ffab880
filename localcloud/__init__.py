"""Embedded local AWS for one machine: moto server + real ASL execution + in-process Lambda handlers.

Usage::

    from localcloud import LocalCloud, LocalResources

    cloud = LocalCloud(host="127.0.0.1", port=0).start()
    res: LocalResources = cloud.provision(Path("template.yaml"), Path("statemachine.asl.json"))
    os.environ.update(res.as_env())
    ...
    cloud.stop()
"""

from localcloud.provision import EventSource, LocalResources, ProvisionError
from localcloud.server import LocalCloud

__all__ = ["EventSource", "LocalCloud", "LocalResources", "ProvisionError"]
