"""Translation of the mesh's services and Istio config into Envoy xDS resources for one proxy.

See docs/translation.md for the listener design and the semantics implemented.
"""

from vmagent.controlplane.translate.build import Resources, all_messages, build_proxy_resources
from vmagent.controlplane.translate.configindex import ConfigIndex, ConfigLookup
from vmagent.controlplane.translate.nametable import build_name_table
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.security import MtlsPolicy, effective_mtls
from vmagent.controlplane.translate.workload import workload_ports

__all__ = [
    "ConfigIndex",
    "ConfigLookup",
    "MeshOptions",
    "MtlsPolicy",
    "ProxyInfo",
    "Resources",
    "all_messages",
    "build_name_table",
    "build_proxy_resources",
    "effective_mtls",
    "workload_ports",
]
