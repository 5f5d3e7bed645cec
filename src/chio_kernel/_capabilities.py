"""Capabilities: signed token bodies, delegation links, the verified-capability cache entry and
the subset rule for attenuation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from chio_sdk.models import Attenuation, CapabilityToken, ChioScope, DelegationLink, Operation, ToolGrant

from chio_kernel._errors import CapabilityError
from chio_kernel.canonical import canonical_json
from chio_kernel.guards import describe_grant, regex_problem

__all__ = ["capability_signing_bytes"]


def capability_signing_bytes(token: CapabilityToken) -> bytes:
    """What a capability token's signature covers: canonical JSON of ``token.body().model_dump(exclude_none=True)``."""
    return canonical_json(token.body().model_dump(exclude_none=True))


class _LinkBody(TypedDict):
    """The fields of a ``DelegationLink`` but its ``signature`` (what the signature covers)."""

    capability_id: str
    delegator: str
    delegatee: str
    attenuations: list[Attenuation]
    timestamp: int


def _link_signing_bytes(link: DelegationLink | Mapping[str, Any]) -> bytes:
    data = link.model_dump(exclude_none=True) if isinstance(link, DelegationLink) else dict(link)
    data.pop("signature", None)
    return canonical_json(data)


@dataclass
class _Cap:
    token: CapabilityToken
    parent_id: str | None
    rate_max: int | None
    rate_per: float | None
    policy_hash: str
    sig_error: str | None  # None when signature + issuer + chain links verified
    lineage: tuple[str, ...]  # own id first, then ancestors (nearest first)
    grants: list[ToolGrant]
    plans: dict[tuple[str, str, Operation], list[tuple[int, ToolGrant]]] = field(default_factory=dict)
    constrained: bool = False  # some grant has constraints (checked before the lock, see evaluate)


def _refuse_bad_patterns(scope: ChioScope) -> None:
    """Refuse a scope whose regex_match constraint RE2 cannot compile (it would deny every call)."""
    for i, g in enumerate(scope.grants):
        for c in g.constraints:
            if c.type == "regex_match" and isinstance(c.value, str):
                problem = regex_problem(c.value)
                if problem is not None:
                    raise CapabilityError(f"grant {i} ({g.server_id}/{g.tool_name}): {problem}")


def _first_non_subset(child: ChioScope, parent: ChioScope) -> str | None:
    """Name the first grant of ``child`` not covered by ``parent``, or None if child ⊆ parent."""
    for g in child.grants:
        if not any(g.is_subset_of(pg) for pg in parent.grants):
            allowed = "; ".join(describe_grant(pg) for pg in parent.grants) or "no tool grants"
            return f"tool grant {describe_grant(g)} is not within the parent's grants ({allowed})"
    for rg in child.resource_grants:
        if not any(rg.is_subset_of(p) for p in parent.resource_grants):
            return f"resource grant {rg.uri_pattern!r} is not within the parent's resource grants"
    for pg2 in child.prompt_grants:
        if not any(pg2.is_subset_of(p) for p in parent.prompt_grants):
            return f"prompt grant {pg2.prompt_name!r} is not within the parent's prompt grants"
    return None
