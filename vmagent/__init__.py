"""vmagent: a service mesh that brings virtual machines into the mesh as first-class members."""

__version__ = "0.1.0"
