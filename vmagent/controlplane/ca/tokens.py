"""Join tokens: ES256 JWTs naming a WorkloadGroup, with expiry, a unique id and a use count.

The signing key lives in the state dir (0600). Every token is recorded in the SQLite state store; its use
count is consumed with one conditional UPDATE, so concurrent joins cannot exceed ``uses`` and the count
survives restarts.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import atomic_write
from vmagent.common.x509util import generate_key, key_pem, load_key
from vmagent.controlplane.db import StateDb

log = logging.getLogger(__name__)

TOKEN_KEY_FILE = "token-key.pem"
ISSUER = "vmagent-cp"
AUDIENCE = "vmagent-join"
# The JWT's time claims (iat, exp) are checked with this leeway, so a token minted by a control plane whose
# clock differs a little from the verifier's is not refused as "issued in the future". The stored record's
# expiry, on the control plane's own clock, stays exact: the leeway never extends a token's life.
TOKEN_LEEWAY = datetime.timedelta(seconds=60)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    jti TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    grp TEXT NOT NULL,
    uses INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
)
"""


class TokenError(VmagentError):
    """A join token that is refused; the message says why without echoing the token.

    ``reason`` is a short fixed word for metrics (``vmagent_cp_join_token_refusals_total{reason}``):
    expired, bad_signature, malformed, unknown, mismatch, revoked, used_up.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TokenRecord:
    jti: str
    namespace: str
    group: str
    uses: int
    used: int
    created_at: float
    expires_at: float
    revoked_at: float | None

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.used >= self.uses:
            return "used"
        return "valid"

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.jti,
            "group": f"{self.namespace}/{self.group}",
            "uses": self.uses,
            "used": self.used,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "state": self.state(),
        }


@dataclass(frozen=True)
class TokenClaims:
    jti: str
    namespace: str
    group: str


class TokenAuthority:
    """Creates, verifies, consumes and revokes join tokens."""

    def __init__(self, db: StateDb, key_pem_bytes: bytes) -> None:
        self._db = db
        self._key = load_key(key_pem_bytes)
        self._public = self._key.public_key()
        db.execute(_SCHEMA)

    @property
    def store_path(self) -> str:
        """The state database's file (for error messages)."""
        return self._db.path

    @classmethod
    def open(cls, state_dir: Path, db: StateDb) -> TokenAuthority:
        """Load the signing key from ``state_dir``, creating it (0600) on first use."""
        path = state_dir / TOKEN_KEY_FILE
        if not path.exists():
            # O_EXCL-style: a concurrent first start keeps whichever key was linked in first.
            tmp = state_dir / f".{TOKEN_KEY_FILE}.{uuid.uuid4().hex}"
            atomic_write(tmp, key_pem(generate_key("ec-p256")), 0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(db, path.read_bytes())

    def create(
        self, namespace: str, group: str, ttl: datetime.timedelta, uses: int
    ) -> tuple[str, TokenRecord]:
        if uses < 1:
            raise VmagentError("--uses must be at least 1")
        if ttl <= datetime.timedelta(0):
            raise VmagentError("--ttl must be positive")
        now = time.time()
        # Whole seconds, as in the JWT's exp claim: the stored record and the token expire at the same instant.
        expires = float(int(now + ttl.total_seconds()))
        rec = TokenRecord(uuid.uuid4().hex, namespace, group, uses, 0, now, expires, None)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"{namespace}/{group}",
            "jti": rec.jti,
            "iat": int(now),
            "exp": int(rec.expires_at),
            "uses": uses,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256")  # type: ignore[arg-type]
        self._db.execute(
            "INSERT INTO join_tokens (jti, namespace, grp, uses, used, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, 0, ?, ?)",
            (rec.jti, namespace, group, uses, rec.created_at, rec.expires_at),
        )
        return token, rec

    def verify(self, token: str) -> TokenClaims:
        """Check signature, expiry and the stored record without consuming a use."""
        try:
            claims = jwt.decode(
                token,
                self._public,  # type: ignore[arg-type]
                algorithms=["ES256"],
                leeway=TOKEN_LEEWAY,
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "jti", "sub", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError(
                "join token has expired; create a new one with `vmagent-cp token create`", "expired"
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError(
                "join token signature is not valid for this control plane", "bad_signature"
            ) from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"join token is malformed or not for this control plane ({exc})") from exc
        sub = str(claims.get("sub", ""))
        ns, _, group = sub.partition("/")
        jti = str(claims["jti"])
        rec = self.get(jti)
        if rec is None:
            raise TokenError("join token is not known to this control plane", "unknown")
        if (rec.namespace, rec.group) != (ns, group):
            raise TokenError("join token does not match its record", "mismatch")
        state = rec.state()
        if state == "revoked":
            raise TokenError("join token has been revoked", "revoked")
        if state == "expired":
            raise TokenError(
                "join token has expired; create a new one with `vmagent-cp token create`", "expired"
            )
        if state == "used":
            raise TokenError(
                f"join token has been used {rec.used} of {rec.uses} times; create a new one", "used_up"
            )
        return TokenClaims(jti, ns, group)

    def consume(self, claims: TokenClaims) -> None:
        """Take one use, atomically; raise TokenError when none is left."""
        _, changed = self._db.execute(
            "UPDATE join_tokens SET used = used + 1 WHERE jti = ? AND used < uses"
            " AND revoked_at IS NULL AND expires_at > ?",
            (claims.jti, time.time()),
        )
        if changed != 1:
            raise TokenError("join token has no uses left; create a new one", "used_up")

    def get(self, jti: str) -> TokenRecord | None:
        rows, _ = self._db.execute(
            "SELECT jti, namespace, grp, uses, used, created_at, expires_at, revoked_at"
            " FROM join_tokens WHERE jti = ?",
            (jti,),
        )
        return TokenRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def list(self) -> list[TokenRecord]:
        rows, _ = self._db.execute(
            "SELECT jti, namespace, grp, uses, used, created_at, expires_at, revoked_at"
            " FROM join_tokens ORDER BY created_at"
        )
        return [TokenRecord(*r) for r in rows]  # type: ignore[arg-type]

    def revoke(self, jti: str) -> TokenRecord:
        _, changed = self._db.execute(
            "UPDATE join_tokens SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL", (time.time(), jti)
        )
        rec = self.get(jti)
        if rec is None:
            raise VmagentError(f"no join token with id {jti!r}; see `vmagent-cp token list`")
        if changed == 0:
            log.info("token %s was already revoked", jti)
        return rec


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")
