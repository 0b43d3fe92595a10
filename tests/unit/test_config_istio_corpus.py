"""Corpus test: Istio's documented examples are accepted, and each Istio rule refuses its example.

tests/testdata/istio/corpus/valid holds configuration of istio.io's task pages for the supported kinds
(bookinfo routing, fault injection, gateways, egress, mutual TLS, authorization, JWT, VMs), written
for this project. Each file of corpus/invalid breaks one validation rule of Istio and starts with
``# refused: MESSAGE``, a part of the message vmagent must print.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmagent.controlplane.config.loader import load_file

CORPUS = Path(__file__).resolve().parent.parent / "testdata" / "istio" / "corpus"
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_istio_documented_example_is_accepted(path: Path) -> None:
    result = load_file(path)
    assert [str(e) for e in result.errors] == []
    assert result.objects, "every corpus file holds objects"
    assert all(o.source == str(path) for o in result.objects)


def test_valid_corpus_produces_no_not_supported_warning() -> None:
    warnings = [str(w) for p in VALID for w in load_file(p).warnings]
    assert [w for w in warnings if "not supported" in w] == []


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_istio_rule_refuses_its_example(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# refused: ")
    expected = first[len("# refused: ") :]
    result = load_file(path)
    assert result.objects == []
    messages = [str(e) for e in result.errors]
    assert any(expected in m for m in messages), messages
    assert all(m.startswith(f"{path}: ") for m in messages)


def test_corpus_is_not_trivial() -> None:
    assert len(VALID) >= 6 and len(INVALID) >= 30
