"""The control plane's ADS server: snapshots, the cache that scopes pushes, stream handling, sync status.

* :mod:`.snapshot` — an immutable per-proxy set of packed resources with content-derived versions.
* :mod:`.cache` — the latest snapshot per proxy; ``set`` notifies that proxy's streams of changed types only.
* :mod:`.stream` — the transport-free xDS state machines (state of the world and delta).
* :mod:`.status` — ACK/NACK tracking per stream and type, and the JSON ``status()`` list.
* :mod:`.server` — the ``AggregatedDiscoveryService`` servicer for a ``grpc.aio`` server, with mTLS identity.
* :mod:`.push` — the debouncing push scheduler.
"""
