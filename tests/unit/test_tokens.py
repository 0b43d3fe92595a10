"""Join tokens: create, verify, consume; use counts under concurrency and across restarts; refusals."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import stat
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from vmagent.common.errors import VmagentError
from vmagent.controlplane.ca import tokens as tokens_module
from vmagent.controlplane.ca.tokens import TOKEN_KEY_FILE, TokenAuthority, TokenError
from vmagent.controlplane.db import StateDb

HOUR = datetime.timedelta(hours=1)


class State:
    """A state dir with its own database connection (one per simulated process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.dbs: list[StateDb] = []

    def authority(self) -> TokenAuthority:
        db = StateDb.open(self.path)
        self.dbs.append(db)
        return TokenAuthority.open(self.path, db)

    def close(self) -> None:
        for db in self.dbs:
            db.close()
        self.dbs.clear()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    s = State(tmp_path / "state")
    yield s
    s.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def test_a_token_verifies_and_each_use_is_counted(state: State) -> None:
    ta = state.authority()
    token, rec = ta.create("demo", "web", HOUR, uses=2)
    claims = ta.verify(token)
    assert (claims.jti, claims.namespace, claims.group) == (rec.jti, "demo", "web")
    payload = _payload(token)
    assert payload["sub"] == "demo/web" and payload["jti"] == rec.jti
    assert jwt.get_unverified_header(token)["alg"] == "ES256"

    ta.consume(claims)
    after_one = ta.get(rec.jti)
    assert after_one is not None and (after_one.used, after_one.uses) == (1, 2)
    assert after_one.state() == "valid"
    ta.consume(ta.verify(token))
    used_up = ta.get(rec.jti)
    assert used_up is not None and used_up.state() == "used"
    with pytest.raises(TokenError, match="has been used 2 of 2 times"):
        ta.verify(token)
    with pytest.raises(TokenError, match="no uses left"):
        ta.consume(claims)


def test_verify_alone_does_not_take_a_use(state: State) -> None:
    ta = state.authority()
    token, rec = ta.create("demo", "web", HOUR, uses=1)
    for _ in range(3):
        ta.verify(token)
    got = ta.get(rec.jti)
    assert got is not None and got.used == 0


def test_racing_joins_on_a_three_use_token_get_exactly_three_successes(state: State) -> None:
    # Two authorities with separate SQLite connections stand for two server processes.
    authorities = [state.authority(), state.authority()]
    token, rec = authorities[0].create("demo", "web", HOUR, uses=3)
    racers = 16
    barrier = threading.Barrier(racers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def join(i: int) -> None:
        ta = authorities[i % 2]
        barrier.wait(timeout=10)
        try:
            ta.consume(ta.verify(token))
            result = "ok"
        except TokenError as exc:
            result = str(exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == racers
    assert outcomes.count("ok") == 3
    assert all("used" in o or "no uses left" in o for o in outcomes if o != "ok")
    final = authorities[1].get(rec.jti)
    assert final is not None and final.used == 3


def test_use_counts_and_the_signing_key_survive_a_restart(state: State) -> None:
    ta = state.authority()
    token, rec = ta.create("demo", "web", HOUR, uses=2)
    ta.consume(ta.verify(token))
    key_file = state.path / TOKEN_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_before = key_file.read_bytes()
    state.close()

    restarted = state.authority()
    assert key_file.read_bytes() == key_before
    got = restarted.get(rec.jti)
    assert got is not None and got.used == 1
    restarted.consume(restarted.verify(token))
    with pytest.raises(TokenError, match="used 2 of 2"):
        restarted.verify(token)


def test_an_expired_token_is_refused(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    ta = state.authority()
    two_hours_ago = time.time() - 7200
    monkeypatch.setattr(tokens_module, "time", types.SimpleNamespace(time=lambda: two_hours_ago))
    token, rec = ta.create("demo", "web", HOUR, uses=1)
    monkeypatch.undo()
    with pytest.raises(TokenError, match="join token has expired; create a new one"):
        ta.verify(token)
    got = ta.get(rec.jti)
    assert got is not None and got.state() == "expired"
    # Consuming checks expiry too (a join that verified just before expiry cannot take a use after it).
    with pytest.raises(TokenError, match="no uses left"):
        ta.consume(tokens_module.TokenClaims(rec.jti, "demo", "web"))


def test_a_token_signed_by_another_control_plane_is_refused(state: State, tmp_path: Path) -> None:
    ours = state.authority()
    other_state = State(tmp_path / "other")
    try:
        foreign, _ = other_state.authority().create("demo", "web", HOUR, uses=1)
    finally:
        other_state.close()
    with pytest.raises(TokenError, match="signature is not valid for this control plane"):
        ours.verify(foreign)


def test_a_tampered_token_is_refused(state: State) -> None:
    ta = state.authority()
    token, _ = ta.create("demo", "web", HOUR, uses=1)
    header, _, signature = token.split(".")
    claims = _payload(token)
    claims["sub"] = "kube-system/admin"
    forged = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    with pytest.raises(TokenError, match="signature is not valid"):
        ta.verify(forged)
    # Re-signing the forged claims with another algorithm (HS256) is refused as well.
    with pytest.raises(TokenError, match="malformed or not for this control plane"):
        ta.verify(jwt.encode(claims, "an HMAC secret the attacker chose, 32+ bytes", algorithm="HS256"))


def test_a_revoked_token_is_refused_and_cannot_be_consumed(state: State) -> None:
    ta = state.authority()
    token, rec = ta.create("demo", "web", HOUR, uses=5)
    claims = ta.verify(token)
    revoked = ta.revoke(rec.jti)
    assert revoked.state() == "revoked"
    with pytest.raises(TokenError, match="has been revoked"):
        ta.verify(token)
    with pytest.raises(TokenError, match="no uses left"):
        ta.consume(claims)
    assert ta.revoke(rec.jti).state() == "revoked"  # revoking twice is harmless
    with pytest.raises(VmagentError, match="no join token with id 'nope'"):
        ta.revoke("nope")


def test_a_validly_signed_token_that_was_never_recorded_is_refused(state: State, tmp_path: Path) -> None:
    # Same signing key, different database: e.g. a state dir restored from an older backup.
    ta = state.authority()
    token, _ = ta.create("demo", "web", HOUR, uses=1)
    restored = State(tmp_path / "restored")
    try:
        shutil.copy(state.path / TOKEN_KEY_FILE, restored.path / TOKEN_KEY_FILE)
        with pytest.raises(TokenError, match="not known to this control plane"):
            restored.authority().verify(token)
    finally:
        restored.close()


def test_garbage_is_refused_without_echoing_it(state: State) -> None:
    ta = state.authority()
    secret = "eyJhbGciOiJFUzI1NiJ9.garbage.garbage"
    with pytest.raises(TokenError, match="malformed") as info:
        ta.verify(secret)
    assert secret not in str(info.value)


def test_refusal_messages_never_contain_the_token(state: State) -> None:
    ta = state.authority()
    token, _ = ta.create("demo", "web", HOUR, uses=1)
    ta.consume(ta.verify(token))
    with pytest.raises(TokenError) as info:
        ta.verify(token)
    assert token not in str(info.value) and token.split(".")[2] not in str(info.value)


def test_create_refuses_nonsense_and_list_shows_state(state: State) -> None:
    ta = state.authority()
    with pytest.raises(VmagentError, match="--uses must be at least 1"):
        ta.create("demo", "web", HOUR, uses=0)
    with pytest.raises(VmagentError, match="--ttl must be positive"):
        ta.create("demo", "web", datetime.timedelta(0), uses=1)
    t1, r1 = ta.create("demo", "web", HOUR, uses=1)
    _, r2 = ta.create("demo", "db", HOUR, uses=3)
    ta.consume(ta.verify(t1))
    listed = {r.jti: r.as_json() for r in ta.list()}
    assert set(listed) == {r1.jti, r2.jti}
    assert listed[r1.jti]["state"] == "used" and listed[r1.jti]["used"] == 1
    assert listed[r2.jti] | {"created_at": None, "expires_at": None} == {
        "id": r2.jti,
        "group": "demo/db",
        "uses": 3,
        "used": 0,
        "state": "valid",
        "created_at": None,
        "expires_at": None,
    }
    assert r1.jti != r2.jti


def test_a_token_minted_on_a_clock_ahead_is_accepted_within_the_leeway(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token whose ``iat`` is up to TOKEN_LEEWAY in the verifier's future (a replica whose clock runs
    ahead minted it) verifies; one minted further ahead is refused as malformed."""
    ta = state.authority()
    leeway = tokens_module.TOKEN_LEEWAY.total_seconds()
    ahead = time.time() + leeway / 2
    monkeypatch.setattr(tokens_module, "time", types.SimpleNamespace(time=lambda: ahead))
    token, rec = ta.create("demo", "web", HOUR, uses=1)
    far_ahead = time.time() + leeway * 3
    monkeypatch.setattr(tokens_module, "time", types.SimpleNamespace(time=lambda: far_ahead))
    too_far, _ = ta.create("demo", "web", HOUR, uses=1)
    monkeypatch.undo()
    assert ta.verify(token).jti == rec.jti
    with pytest.raises(TokenError, match="not yet valid"):
        ta.verify(too_far)
