"""Input coercion: what callers pass (dicts, strings, models) checked and turned into the kernel's
types, with a :class:`~chio_kernel.KernelInputError` that says what to pass instead."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from chio_sdk.models import CapabilityToken, ChioScope, MonetaryAmount, Operation
from pydantic import BaseModel, ValidationError

from chio_kernel._errors import KernelInputError

__all__ = ["APPROVAL_CONSTRAINT", "MAX_COST_UNITS", "check_scope_fields", "normalize_scope_constraints"]


MAX_STORED_INT = 2**63 - 1  # the largest integer both stores hold (a signed 64-bit column)
MAX_COST_UNITS = MAX_STORED_INT
MAX_TTL = 100 * 365 * 86400  # a capability lives at most 100 years


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _require_str(name: str, value: Any, *, max_len: int = 1024) -> str:
    if not isinstance(value, str):
        raise KernelInputError(f"{name} must be a string, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise KernelInputError(f"{name} must be a non-empty string")
    if len(value) > max_len:
        raise KernelInputError(f"{name} is {len(value)} characters long; at most {max_len} allowed")
    if "\x00" in value:
        raise KernelInputError(f"{name} must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise KernelInputError(f"{name} contains a lone UTF-16 surrogate; pass valid Unicode text") from None
    return value


def _unknown_fields(model: Any, data: Any, path: str) -> str | None:
    """The first key in ``data`` that ``model`` (a chio_sdk model) does not have, as a dotted path."""
    if not isinstance(data, Mapping):
        return None
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            return f"{path}{key}"
        inner = _model_in(fields[key].annotation)
        if inner is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
            found = _unknown_fields(inner, item, where)
            if found is not None:
                return found
    return None


def _model_in(annotation: Any) -> Any:
    """The pydantic model class inside ``X``, ``list[X]`` or ``X | None``, if any."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_ID_FORBIDDEN = frozenset(' /?#%\\"\'<>')


def _new_capability_id(value: Any) -> str:
    """Validate a caller-chosen capability id: it appears in URLs and command lines."""
    cap_id = _require_str("capability_id", value, max_len=200)
    bad = sorted({c for c in cap_id if c in _ID_FORBIDDEN or not c.isprintable()})
    if bad:
        raise KernelInputError(
            f"capability_id {cap_id!r} contains {''.join(bad)!r}; use letters, digits and . _ - : @ "
            "(e.g. 'cap-research-pipeline')"
        )
    return cap_id


def check_scope_fields(scope: Any, name: str = "scope") -> None:
    """Refuse a scope dict with a key a ChioScope (or its grants, constraints...) does not have.

    pydantic silently drops unknown keys, so a misspelt ``constraint`` or ``grant`` would issue a
    WIDER (or empty) scope than meant. Every path that takes a scope as a dict (the kernel, the
    sidecar, the CLI's ``--scope-file``) runs this one check. Raises :class:`KernelInputError` naming
    the field; anything that is not a mapping is left to the model validation.
    """
    if not isinstance(scope, Mapping):
        return
    unknown = _unknown_fields(ChioScope, scope, "")
    if unknown is not None:
        raise KernelInputError(
            f"{name} has an unknown field {unknown!r}; a ChioScope has grants (server_id, tool_name, "
            "operations, constraints, max_invocations, max_cost_per_invocation, max_total_cost, "
            "dpop_required), resource_grants and prompt_grants; constraints have type and value"
        )


#: The grant constraint that sends a call to a human (docs/approvals.md).
APPROVAL_CONSTRAINT = "require_approval_above"


#: The most distinct approvers a ``require_approval_above`` constraint may ask for.
MAX_APPROVERS = 10


def approval_rule(value: Any, where: str) -> tuple[int, int]:
    """``(threshold_units, approvers)`` of a ``require_approval_above`` constraint value.

    Accepted: upstream's wire shape ``{"threshold_units": N}``, with an optional ``"approvers": K``
    (K distinct people must approve, 1 to :data:`MAX_APPROVERS`, default 1); the plain integer ``N`` a
    ``chio_sdk`` ``Constraint`` can hold; and ``"N;approvers=K"``, the form an issued token carries
    when K > 1 (a ``Constraint`` value is a string or an integer).
    """
    approvers: Any = 1
    if isinstance(value, Mapping):
        if "threshold_units" not in value or not set(value) <= {"threshold_units", "approvers"}:
            raise KernelInputError(
                f"{where}: a require_approval_above value is {{\"threshold_units\": N, \"approvers\": K}} "
                f"(approvers optional), got fields {sorted(value)}"
            )
        approvers = value.get("approvers", 1)
        value = value["threshold_units"]
    elif isinstance(value, str):
        head, sep, tail = value.partition(";approvers=")
        if not sep or not head.isdigit() or not tail.isdigit():
            raise KernelInputError(f"{where}: a require_approval_above string value is 'N;approvers=K', got {value!r:.60}")
        value, approvers = int(head), int(tail)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COST_UNITS:
        raise KernelInputError(
            f"{where}: require_approval_above needs threshold_units, an integer from 0 to 2^63-1 (cost units), "
            f"got {value!r:.60}"
        )
    if isinstance(approvers, bool) or not isinstance(approvers, int) or not 1 <= approvers <= MAX_APPROVERS:
        raise KernelInputError(
            f"{where}: require_approval_above approvers is how many distinct people must approve, an integer "
            f"from 1 to {MAX_APPROVERS}, got {approvers!r:.60}"
        )
    return value, approvers


def approval_threshold_value(value: Any, where: str) -> int | str:
    """A ``require_approval_above`` value in the form an issued token carries: ``N`` (one approver) or
    ``"N;approvers=K"`` (see :func:`approval_rule`, which checks it)."""
    threshold, approvers = approval_rule(value, where)
    return threshold if approvers == 1 else f"{threshold};approvers={approvers}"


def normalize_scope_constraints(scope: Any, name: str = "scope") -> Any:
    """A scope dict with every ``require_approval_above`` constraint in the form ``chio_sdk`` can hold.

    Upstream Chio writes it ``{"type": "require_approval_above", "value": {"threshold_units": N}}``;
    ``chio_sdk.models.Constraint.value`` is ``str | int | None``, so the kernel accepts that dict (and
    the plain ``N``) and issues the token with ``"value": N`` (what stock ChioClients can parse).
    Anything that is not a dict of that shape is returned unchanged (left to the model validation).
    """
    if not isinstance(scope, Mapping) or not isinstance(scope.get("grants"), list):
        return scope
    grants = []
    changed = False
    for i, grant in enumerate(scope["grants"]):
        constraints = grant.get("constraints") if isinstance(grant, Mapping) else None
        if not isinstance(constraints, list):
            grants.append(grant)
            continue
        new = []
        for j, c in enumerate(constraints):
            if isinstance(c, Mapping) and c.get("type") == APPROVAL_CONSTRAINT:
                value = approval_threshold_value(c.get("value"), f"{name}.grants[{i}].constraints[{j}]")
                if c.get("value") != value:
                    c = {**c, "value": value}
                    changed = True
            new.append(c)
        grants.append({**grant, "constraints": new})
    return {**scope, "grants": grants} if changed else scope


def _coerce_scope(scope: Any, name: str = "scope") -> ChioScope:
    if isinstance(scope, ChioScope):
        return ChioScope.model_validate(scope.model_dump())  # private copy, re-validated
    check_scope_fields(scope, name)
    return _from_dict_form(ChioScope, normalize_scope_constraints(scope, name), name)


def _coerce_token(token: Any, name: str = "token") -> CapabilityToken:
    if isinstance(token, CapabilityToken):
        return token
    return _from_dict_form(CapabilityToken, token, name)


_M = TypeVar("_M", bound=BaseModel)


def _from_dict_form(model: type[_M], value: Any, name: str) -> _M:
    """``value`` (the dict form of ``model``) validated; anything else is a KernelInputError."""
    if isinstance(value, Mapping):
        try:
            return model.model_validate(dict(value))
        except ValidationError as err:
            raise KernelInputError(f"{name} is not a valid {model.__name__}: {err}") from err
    raise KernelInputError(
        f"{name} must be a chio_sdk.models.{model.__name__} (or its dict form), got {type(value).__name__}"
    )


def _coerce_operation(operation: Any) -> Operation:
    if isinstance(operation, Operation):
        return operation
    try:
        return Operation(operation)
    except ValueError:
        allowed = ", ".join(op.value for op in Operation)
        raise KernelInputError(f"operation {operation!r} is not one of: {allowed}") from None


def _coerce_cost(cost: Any) -> tuple[int, str] | None:
    if cost is None:
        return None
    units: object
    currency: object
    if isinstance(cost, MonetaryAmount):
        units, currency = cost.units, cost.currency
    elif isinstance(cost, Mapping):
        extra = set(cost) - {"units", "currency"}
        if extra:
            raise KernelInputError(f"cost has unknown fields {sorted(extra, key=repr)}; pass {{'units': int, 'currency': str}}")
        units, currency = cost.get("units"), cost.get("currency")
    else:
        raise KernelInputError(
            f"cost must be a chio_sdk.models.MonetaryAmount or {{'units': int, 'currency': str}}, got {type(cost).__name__}"
        )
    if isinstance(units, bool) or not isinstance(units, int) or not 0 <= units <= MAX_COST_UNITS:
        raise KernelInputError(
            f"cost.units must be an integer from 0 to 2^63-1 (minor units, e.g. cents), got {units!r:.60}"
        )
    if not isinstance(currency, str) or not currency:
        raise KernelInputError(f"cost.currency must be a non-empty string such as 'USD', got {currency!r}")
    return units, currency


def _coerce_rate_limit(rate_limit: Any) -> tuple[int, float] | None:
    if rate_limit is None:
        return None
    if isinstance(rate_limit, Mapping):
        rate_limit = (rate_limit.get("max_calls"), rate_limit.get("per_seconds"))
    if not isinstance(rate_limit, Sequence) or isinstance(rate_limit, str) or len(rate_limit) != 2:
        raise KernelInputError(f"rate_limit must be (max_calls, per_seconds), got {rate_limit!r}")
    max_calls, per = rate_limit
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
        raise KernelInputError(f"rate_limit max_calls must be a positive integer, got {max_calls!r}")
    if isinstance(per, bool) or not isinstance(per, (int, float)) or not (0 < per < 10**9):
        raise KernelInputError(f"rate_limit per_seconds must be a positive number, got {per!r}")
    return max_calls, float(per)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise KernelInputError(f"{name} must be a positive integer number of seconds, got {value!r}")
    if value > MAX_TTL:
        raise KernelInputError(f"{name} is more than 100 years; pass a shorter lifetime")
    return value


_V = TypeVar("_V")


def from_env(value: _V | None, name: str, env: str, parse: Callable[[str], _V], what: str) -> tuple[_V | None, str]:
    """A setting as given, else ``$env`` parsed, else None; with where it came from (for messages).

    Raises:
        KernelInputError: ``$env`` is set but ``parse`` refuses it (the sentence names ``what``).
    """
    if value is not None:
        return value, name
    raw = os.environ.get(env, "").strip()
    if not raw:
        return None, name
    try:
        return parse(raw), f"${env}"
    except ValueError:
        raise KernelInputError(f"${env} must be {what}, got {raw[:40]!r}") from None
