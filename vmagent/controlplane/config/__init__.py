"""Istio-compatible config: schemas and validation, YAML loading, the directory and SQLite sources, and
the merged view that the registry and translation read.

Public entry points: ``load_paths``/``load_text`` (validate YAML), ``analyze`` (cross-object warnings),
``ConfigStore`` (what ``apply`` writes), ``ConfigDirectory`` and ``StoreSource`` (sources), ``ConfigSet``
(the merged, subscribable view).
"""

from vmagent.controlplane.config.analyze import analyze
from vmagent.controlplane.config.issues import Issue
from vmagent.controlplane.config.loader import LoadResult, load_file, load_paths, load_text
from vmagent.controlplane.config.snapshot import ConfigSet, ConfigSnapshot, ConfigSource, ConfigView
from vmagent.controlplane.config.store import ConfigStore, StoreSource
from vmagent.controlplane.config.watch import ConfigDirectory

__all__ = [
    "ConfigDirectory",
    "ConfigSet",
    "ConfigSnapshot",
    "ConfigSource",
    "ConfigStore",
    "ConfigView",
    "Issue",
    "LoadResult",
    "StoreSource",
    "analyze",
    "load_file",
    "load_paths",
    "load_text",
]
