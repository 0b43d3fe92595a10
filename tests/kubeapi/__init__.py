"""A test Kubernetes API server: a FAKE standing in for kube-apiserver, for tests only.

No kube-apiserver can be installed on the machines this project is developed and tested on, so the
tests of the Kubernetes side run against this server instead. It speaks the real Kubernetes REST protocol
over HTTPS well enough that clients nobody here wrote — the official ``kubernetes`` Python client and
``kubectl`` — work against it unchanged through a kubeconfig (tests/kube/ proves it). Product code never
imports it; it talks to it only through the ``kubernetes`` client and a kubeconfig, as to a real cluster.

Served: discovery (/api, /apis, group and resource lists, /version; classic discovery only — kubectl falls
back to it from the aggregated form), CRUD of namespaced and cluster-scoped kinds with resourceVersion, uid,
generation, creationTimestamp, 409 on a stale resourceVersion, 404, 400/422 naming the field, the status
subresource, label and field selectors, limit/continue, JSON patch, merge patch, strategic merge patch (the
merge keys of the list fields the project uses), server-side apply as a merge, list + watch with
resourceVersion, bookmarks, sendInitialEvents, timeoutSeconds, 410 Expired after compaction; built-in kinds
(resources.py), CustomResourceDefinitions (their resources served once created, validated and pruned by
their structural schema (unknown fields refused under fieldValidation=Strict), gone with their objects on delete), TokenRequest and TokenReview with bound
service account tokens, Table output for ``kubectl get``.

Store: an in-memory revisioned log with compaction (store.py), not etcd. Debian's etcd-server 3.4 would
give real revisions, but the API server's own semantics (resourceVersion per object, watch from a revision,
410 after compaction, list at a revision) sit above the store either way and are what clients see; a
log in the process gives those exactly, starts in milliseconds per test with no daemon, port or data
directory to manage, and lets a test compact or cut watches at a known instant without racing a
separate process.

HTTP: the standard library's ThreadingHTTPServer with TLS from ``ssl`` (no new dependency; one thread
per connection suits watch streams; HTTP/1.1 with chunked watch responses, as kube-apiserver answers
HTTP/1.1 clients).

Remaining gaps to a real API server (tests that need these cannot use it):
* no authorization (RBAC objects are stored but not enforced): every authenticated user may do anything;
* no admission (webhooks in Mutating/ValidatingWebhookConfigurations are stored, never called);
* no controllers: no garbage collection by ownerReferences (stored only), no Deployment/ReplicaSet/Pod
  lifecycle, no Endpoints/EndpointSlices derived from Services, no kubelet (a deleted Pod goes at once);
  namespaces are deleted with their contents at once (no Terminating phase);
* finalizers are honoured: deleting an object with finalizers sets deletionTimestamp; it goes when an update
  empties them;
* built-in kinds get only a few of their validation rules and defaults (Pod containers, Service ports and
  clusterIP, EndpointSlice addressType, CRD names); no conversion between versions (a CRD's versions differ
  only in apiVersion, like conversion strategy None); no CEL rules, formats or defaults from CRD schemas;
* server-side apply merges without field ownership (no managedFields, no conflicts between managers);
* no aggregated discovery, no OpenAPI documents (/openapi/v2, /openapi/v3 answer 404), no protobuf, no
  HTTP/2, no exec/logs/port-forward/proxy subresources, no watch cache consistency quirks, no priority
  and fairness; a resourceVersion newer than the store answers 504 at once instead of after waiting.
"""

from tests.kubeapi.server import KubeApiServer

__all__ = ["KubeApiServer"]
