"""``metav1.Status`` failures, as the API server returns them."""

from __future__ import annotations

from typing import Any

from tests.kubeapi.resources import ResourceType

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
}


class ApiError(Exception):
    def __init__(
        self, code: int, message: str, reason: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _details(t: ResourceType, name: str) -> dict[str, Any]:
    return {"name": name, "group": t.group, "kind": t.resource}


def _what(t: ResourceType) -> str:
    return f"{t.resource}.{t.group}" if t.group else t.resource


def not_found(t: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{_what(t)} "{name}" not found', "NotFound", _details(t, name))


def already_exists(t: ResourceType, name: str) -> ApiError:
    return ApiError(409, f'{_what(t)} "{name}" already exists', "AlreadyExists", _details(t, name))


def conflict(t: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {_what(t)} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        "Conflict",
        _details(t, name),
    )


def invalid(t: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 naming each bad field: causes are (field, message)."""
    text = "; ".join(f"{f}: {m}" for f, m in causes)
    details = _details(t, name) | {
        "kind": t.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
    }
    return ApiError(422, f'{t.kind} "{name}" is invalid: {text}', "Invalid", details)


def expired(message: str) -> ApiError:
    return ApiError(410, message, "Expired")
