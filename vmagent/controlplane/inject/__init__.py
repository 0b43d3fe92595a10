"""The sidecar injection webhook (docs/kubernetes.md, "Sidecar injection").

``policy.py`` decides whether a pod gets a sidecar, ``template.py`` builds what is added, ``probes.py``
rewrites the application's probes to go through the agent, ``patch.py`` turns all of it into an RFC 6902
JSON Patch against the pod as sent, ``review.py`` answers an AdmissionReview, ``server.py`` serves it over
HTTPS and ``cabundle.py`` writes the mesh root into the MutatingWebhookConfiguration.
"""
