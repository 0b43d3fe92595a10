"""Small builders for recurring Envoy proto pieces (addresses, config sources, typed configs)."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message


def typed(msg: Message) -> any_pb2.Any:
    """``msg`` packed into ``Any`` with deterministic bytes."""
    a = any_pb2.Any()
    a.Pack(msg, deterministic=True)
    return a


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def boolean(value: bool) -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=value)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def cidr(address: str, prefix_len: int) -> address_pb2.CidrRange:
    return address_pb2.CidrRange(address_prefix=address, prefix_len=u32(prefix_len))


def ads() -> config_source_pb2.ConfigSource:
    """Resources fetched over the proxy's ADS stream (xDS v3)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def grpc_source(cluster: str) -> config_source_pb2.ConfigSource:
    """Resources fetched from a gRPC service reached through the static ``cluster`` (e.g. SDS)."""
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.ApiVersion.V3,
            set_node_on_first_message_only=True,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)
                )
            ],
        ),
        # Wait for the secret as long as it takes: a listener without its certificate must not go live.
        initial_fetch_timeout=duration(0),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def filter_metadata(namespace: str, values: dict[str, str]) -> base_pb2.Metadata:
    s = struct_pb2.Struct()
    s.update(values)
    md = base_pb2.Metadata()
    md.filter_metadata[namespace].CopyFrom(s)
    return md
