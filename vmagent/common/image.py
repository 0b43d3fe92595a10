"""The container image of vmagent and vmagent-cp (``make image``, docs/kubernetes.md "The image").

One image holds both packages (the agent with Envoy, and the control plane): the control plane's Deployment
and the sidecar the injection webhook adds both name it by ``IMAGE``. The tag is the project's version, so
the same tree always builds the same name. Operators who push it elsewhere override the name with
kustomize ``images:`` (and the webhook's image setting).
"""

from __future__ import annotations

from vmagent import __version__

# "localhost/" is what podman calls an image built here; it never resolves to a public registry.
IMAGE_REPOSITORY = "localhost/vmagent"
IMAGE_TAG = __version__
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"

# The image's user: the proxy user of the .deb (vmagent-proxy) with Istio's fixed uid and gid 1337, so a
# pod's sidecar runs as a known non-root uid that capture can exempt and `runAsNonRoot` can verify.
IMAGE_UID = 1337
IMAGE_GID = 1337
