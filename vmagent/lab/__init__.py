"""A lab of network namespaces on one machine: the demo (`make demo`) and the system tests build meshes here.

Needs root (``ip netns``). Nothing here is used by the agent or the control plane in production.
"""
