"""Capabilities: signed token bodies, delegation links, the verified-capability cache entry and
the subset rule for attenuation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypedDict

from chio_sdk.models import Attenuation, CapabilityToken, ChioScope, DelegationLink, Operation, ToolGrant

from chio_kernel._coerce import (
    _coerce_rate_limit,
    _coerce_scope,
    _coerce_token,
    _iso,
    _new_capability_id,
    _positive_int,
    _require_str,
    from_env,
)
from chio_kernel._errors import CapabilityError, CapabilityLimitError, KernelInputError
from chio_kernel._ids import _uuid7_int
from chio_kernel._paging import MAX_PAGE_LIMIT, Page, Yielder, check_limit, decode_cursor, encode_cursor
from chio_kernel._store import CapabilityRow, StoreReader, StoreWriter
from chio_kernel.signing import Signer, verify_hex
from chio_kernel.canonical import canonical_json
from chio_kernel._guards import describe_grant, describe_grants, regex_problem

__all__ = [
    "DEFAULT_MAX_DELEGATION_DEPTH",
    "DEFAULT_MAX_GRANTS",
    "Capabilities",
    "CapabilityLimits",
    "Trust",
    "capability_signing_bytes",
    "resolve_limits",
    "token_signers",
]

_CAP_CACHE_SIZE = 10_000  # verified capabilities kept per Kernel (tokens are immutable)


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


#: Grants (tool, resource and prompt grants together) one capability may hold by default.
DEFAULT_MAX_GRANTS = 1_000
#: Delegation links one capability may carry by default (a root has none; each attenuation adds one).
DEFAULT_MAX_DELEGATION_DEPTH = 32
MAX_GRANTS_ENV = "CHIO_MAX_GRANTS"
MAX_DELEGATION_DEPTH_ENV = "CHIO_MAX_DELEGATION_DEPTH"


@dataclass(frozen=True)
class CapabilityLimits:
    """What one capability may hold: ``max_grants`` grants and ``max_delegation_depth`` links."""

    max_grants: int = DEFAULT_MAX_GRANTS
    max_delegation_depth: int = DEFAULT_MAX_DELEGATION_DEPTH


def _resolve_limit(value: int | None, name: str, env: str, default: int) -> int:
    """``value``, else ``$env``, else ``default``; a positive integer (else :class:`KernelInputError`)."""
    value, where = from_env(value, name, env, int, "a whole number")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KernelInputError(f"{where} must be a positive whole number, got {value!r:.40}")
    return value


def resolve_limits(max_grants: int | None, max_delegation_depth: int | None) -> CapabilityLimits:
    """The limits a kernel is given, else ``$CHIO_MAX_GRANTS`` / ``$CHIO_MAX_DELEGATION_DEPTH``, else the defaults.

    Raises:
        KernelInputError: not a positive whole number.
    """
    return CapabilityLimits(
        _resolve_limit(max_grants, "max_grants", MAX_GRANTS_ENV, DEFAULT_MAX_GRANTS),
        _resolve_limit(max_delegation_depth, "max_delegation_depth", MAX_DELEGATION_DEPTH_ENV,
                       DEFAULT_MAX_DELEGATION_DEPTH),
    )


def _check_limits(scope: ChioScope, depth: int, limits: CapabilityLimits, what: str) -> None:
    """Refuse a scope with more grants, or a chain deeper, than ``limits`` allow."""
    grants = len(scope.grants) + len(scope.resource_grants) + len(scope.prompt_grants)
    if grants > limits.max_grants:
        raise CapabilityLimitError(
            f"{what} has {grants:,} grants; this kernel allows at most {limits.max_grants:,} per capability "
            f"(max_grants / ${MAX_GRANTS_ENV} / --max-grants). Use wildcards or split it into several capabilities"
        )
    if depth > limits.max_delegation_depth:
        raise CapabilityLimitError(
            f"{what} would be {depth} delegations deep; this kernel allows at most {limits.max_delegation_depth} "
            f"(max_delegation_depth / ${MAX_DELEGATION_DEPTH_ENV} / --max-delegation-depth). Attenuate from a "
            "capability nearer the root"
        )


LoadCap = Callable[[StoreReader, str], _Cap | None]
"""Loads a verified capability inside a store transaction (``Capabilities.load``), handed to the services."""


def _refuse_bad_patterns(scope: ChioScope) -> None:
    """Refuse a scope whose regex_match constraint RE2 cannot compile (it would deny every call)."""
    for i, g in enumerate(scope.grants):
        for c in g.constraints:
            if c.type == "regex_match" and isinstance(c.value, str):
                problem = regex_problem(c.value)
                if problem is not None:
                    raise CapabilityError(f"grant {i} ({g.server_id}/{g.tool_name}): {problem}")


class _GrantIndex:
    """A parent scope's tool grants indexed by server, tool and constraint set, so checking a
    child grant against them looks up its few candidates instead of scanning every parent grant.

    A parent grant can cover a child grant only if its server is ``*`` or the child's, its tool
    ``*`` or the child's, and its constraints are a subset of the child's (``ToolGrant.is_subset_of``);
    the candidates found that way are then checked with ``is_subset_of`` itself, so the answer is
    the SDK's rule exactly.
    """

    __slots__ = ("_by_tool",)

    def __init__(self, grants: list[ToolGrant]) -> None:
        self._by_tool: dict[tuple[str, str], dict[frozenset[tuple[str, Any]], list[ToolGrant]]] = {}
        for g in grants:
            by_constraints = self._by_tool.setdefault((g.server_id, g.tool_name), {})
            by_constraints.setdefault(_constraint_set(g), []).append(g)

    def covers(self, g: ToolGrant) -> bool:
        """Is ``g`` a subset of one of the indexed grants?"""
        wanted: frozenset[tuple[str, Any]] | None = None
        for key in {(g.server_id, g.tool_name), (g.server_id, "*"), ("*", g.tool_name), ("*", "*")}:
            by_constraints = self._by_tool.get(key)
            if not by_constraints:
                continue
            if wanted is None:
                wanted = _constraint_set(g)
            for constraints in _subsets_present(wanted, by_constraints):
                if any(g.is_subset_of(pg) for pg in by_constraints[constraints]):
                    return True
        return False


def _constraint_set(g: ToolGrant) -> frozenset[tuple[str, Any]]:
    """A grant's constraints as a set (equal as the SDK's ``Constraint`` models compare)."""
    return frozenset((c.type, c.value) for c in g.constraints)


def _subsets_present(
    wanted: frozenset[tuple[str, Any]], present: dict[frozenset[tuple[str, Any]], list[ToolGrant]]
) -> list[frozenset[tuple[str, Any]]]:
    """The keys of ``present`` that are subsets of ``wanted``: whichever is cheaper, testing each
    key or looking up each subset of ``wanted``."""
    if len(wanted) > 16 or len(present) <= 1 << len(wanted):
        return [k for k in present if k <= wanted]
    items = list(wanted)
    subsets = [frozenset(c for bit, c in enumerate(items) if mask >> bit & 1) for mask in range(1 << len(items))]
    return [k for k in subsets if k in present]


def _by_name(grants: list[Any], name: Callable[[Any], str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for g in grants:
        out.setdefault(name(g), []).append(g)
    return out


def _first_non_subset(child: ChioScope, parent: ChioScope) -> str | None:
    """Name the first grant of ``child`` not covered by ``parent``, or None if child ⊆ parent.

    The SDK's ``ChioScope.is_subset_of`` rule, with the parent's grants indexed (by server/tool
    and constraint set, by resource pattern, by prompt name): O(grants) lookups, not all pairs.
    """
    if child.grants:
        index = _GrantIndex(parent.grants)
        for g in child.grants:
            if not index.covers(g):
                allowed = describe_grants(parent.grants) or "no tool grants"
                return f"tool grant {describe_grant(g)} is not within the parent's grants ({allowed})"
    resources = _by_name(parent.resource_grants, lambda r: str(r.uri_pattern))
    for rg in child.resource_grants:
        if not any(rg.is_subset_of(p) for p in (*resources.get(rg.uri_pattern, ()), *resources.get("*", ()))):
            return f"resource grant {rg.uri_pattern!r} is not within the parent's resource grants"
    prompts = _by_name(parent.prompt_grants, lambda p: str(p.prompt_name))
    for pg2 in child.prompt_grants:
        if not any(pg2.is_subset_of(p) for p in (*prompts.get(pg2.prompt_name, ()), *prompts.get("*", ()))):
            return f"prompt grant {pg2.prompt_name!r} is not within the parent's prompt grants"
    return None


def token_signers(token: CapabilityToken) -> list[str]:
    """The keys that signed a token: its issuer and every delegation link's delegator."""
    return [token.issuer, *(link.delegator for link in token.delegation_chain)]


class Trust:
    """Which keys a kernel accepts as signers: its own and ``trusted_keys``.

    The fleet's trust (``chio_kernel._fleet.FleetTrust``) widens it to every key registered in the
    shared store and refuses retired signers; the capability and receipt checks ask it, never the
    kernel.
    """

    #: Whether :meth:`learn` can find keys :attr:`issuers` does not hold yet.
    learns = False

    def __init__(self, own_key: str, trusted_keys: frozenset[str]) -> None:
        """Trust ``own_key`` and ``trusted_keys`` (hex Ed25519 public keys)."""
        self.own_key = own_key
        self.issuers: frozenset[str] = frozenset({own_key}) | trusted_keys

    def learn(self, st: StoreReader | None) -> None:
        """Learn keys that joined since (the store given, or a short read); a lone kernel knows them all."""

    def refused_signer(self, token: CapabilityToken) -> str | None:
        """Why a signer of ``token`` may sign nothing any more (a retired fleet key), or None."""
        return None

    def refused_token(self, token: CapabilityToken) -> str | None:
        """:meth:`refused_signer` read from the store now (for validation outside a transaction)."""
        return None

    def on_write(self, st: StoreWriter) -> bool:
        """Called first in every evaluation's write transaction: True if verified capabilities must be re-checked."""
        return False


class Capabilities:
    """Issue, attenuate, revoke and validate capability tokens, and cache the verified ones.

    Every read and write goes through the ``read`` / ``write`` store transactions it is handed;
    ``trust`` says whose signatures count.
    """

    def __init__(
        self,
        signer: Signer,
        trust: Trust,
        clock: Callable[[], float],
        read: Callable[[], AbstractContextManager[StoreReader]],
        write: Callable[[], AbstractContextManager[StoreWriter]],
        limits: CapabilityLimits = CapabilityLimits(),
    ) -> None:
        """Sign with ``signer``, trust ``trust``'s keys, tell time by ``clock``, store via ``read`` /
        ``write``; refuse capabilities beyond ``limits``."""
        self.limits = limits
        self._signer = signer
        self.public_key_hex = signer.public_key_hex
        self._trust = trust
        self._clock = clock
        self._read = read
        self._write = write
        self.cache: dict[str, _Cap] = {}  # the verified capabilities (tokens are immutable)
        self.busy: Callable[[], bool] | None = None  # evaluations in flight: pages pause for them

    # --- capabilities: loading ---

    def load(self, st: StoreReader, capability_id: str) -> _Cap | None:
        """The verified capability with this id (cached), loaded in the caller's store transaction; None if unknown."""
        cap = self.cache.get(capability_id)
        if cap is not None:
            return cap
        row = st.capability(capability_id)
        if row is None:
            return None
        token = CapabilityToken.model_validate_json(row.token)
        cap = self._make_cap(st, token, row.parent_id, row.rate_max, row.rate_per)
        if len(self.cache) >= _CAP_CACHE_SIZE:  # bounded: drop the oldest entry (insertion order)
            self.cache.pop(next(iter(self.cache)))
        self.cache[capability_id] = cap
        return cap

    def _make_cap(
        self,
        st: StoreReader,
        token: CapabilityToken,
        parent_id: str | None,
        rate_max: int | None,
        rate_per: float | None,
    ) -> _Cap:
        lineage = [token.id] + [link.capability_id for link in reversed(token.delegation_chain)]
        policy_hash = hashlib.sha256(
            canonical_json({"capability_id": token.id, "scope": token.scope.model_dump(exclude_none=True)})
        ).hexdigest()
        return _Cap(
            token=token,
            parent_id=parent_id,
            rate_max=rate_max,
            rate_per=rate_per,
            policy_hash=policy_hash,
            sig_error=self._static_check(st, token),
            lineage=tuple(lineage),
            grants=list(token.scope.grants),
            constrained=any(g.constraints for g in token.scope.grants),
        )

    def _warm(self, st: StoreReader, token: CapabilityToken) -> None:
        """Load the token's ancestors root first, so each finds its parent verified in the cache and
        checks only its own link (see :meth:`_verified_links`): a chain of depth d costs O(d) link
        checks, not O(d^2)."""
        for link in token.delegation_chain:
            if link.capability_id not in self.cache:
                self.load(st, link.capability_id)

    def _verified_links(self, token: CapabilityToken) -> int:
        """How many leading links of ``token``'s chain are verified already: all but the last when
        its parent is in the cache, verified, with exactly these links (they are its own chain)."""
        chain = token.delegation_chain
        if not chain:
            return 0
        parent = self.cache.get(chain[-1].capability_id)
        if parent is None or parent.sig_error is not None or parent.token.delegation_chain != chain[:-1]:
            return 0
        return len(chain) - 1

    def _static_check(self, st: StoreReader | None, token: CapabilityToken) -> str | None:
        """Signature, issuer and delegation-chain checks (the parts that never change): reason or None."""
        if st is not None and token.delegation_chain:
            self._warm(st, token)
        trust = self._trust
        if trust.learns and any(k not in trust.issuers for k in token_signers(token)):
            trust.learn(st)  # a kernel that joined the fleet after this one started
        problem = self._signature_problem(st, token, trust.issuers)
        return problem if problem is not None else trust.refused_signer(token)

    def _signature_problem(self, st: StoreReader | None, token: CapabilityToken, issuers: frozenset[str]) -> str | None:
        if token.issuer not in issuers:
            return (
                f"capability {token.id} was issued by {token.issuer}, which is neither this kernel "
                f"({self.public_key_hex}) nor a trusted key; get a capability from this kernel or "
                "add the issuer to trusted_keys"
            )
        try:
            message = capability_signing_bytes(token)
        except ValueError as err:
            return f"capability {token.id} cannot be canonicalised: {err}"
        if not verify_hex(token.issuer, token.signature, message):
            return (
                f"capability {token.id} has an invalid signature (it was altered after issue or signed by "
                "another key); use the token exactly as the kernel issued it"
            )
        chain = token.delegation_chain
        for i in range(self._verified_links(token), len(chain)):
            link = chain[i]
            if link.delegator not in issuers:
                return f"delegation link {i} of {token.id} was signed by an unknown key {link.delegator}"
            if not verify_hex(link.delegator, link.signature, _link_signing_bytes(link)):
                return f"delegation link {i} of {token.id} (from {link.capability_id}) has an invalid signature"
            child_id = chain[i + 1].capability_id if i + 1 < len(chain) else token.id
            child_scope = token.scope if child_id == token.id else None
            child_subject = token.subject if child_id == token.id else None
            if st is not None:
                parent = self._stored_token(st, link.capability_id)
                if child_scope is None:
                    child_tok = self._stored_token(st, child_id)
                    if child_tok is not None:
                        child_scope, child_subject = child_tok.scope, child_tok.subject
                if parent is not None:
                    if child_scope is not None and _first_non_subset(child_scope, parent.scope) is not None:
                        return (
                            f"delegation link {i} of {token.id}: the scope of {child_id} is not a subset of "
                            f"its parent {parent.id}"
                        )
                elif link.delegator == self.public_key_hex:
                    return (
                        f"delegation link {i} of {token.id} names parent {link.capability_id}, which this kernel "
                        "never issued"
                    )
            if child_subject is not None and link.delegatee != child_subject:
                return f"delegation link {i} of {token.id} delegates to {link.delegatee!r}, not to {child_subject!r}"
        return None

    def _stored_token(self, st: StoreReader, capability_id: str) -> CapabilityToken | None:
        """The stored token with this id (the cached one when loaded already), or None."""
        cached = self.cache.get(capability_id)
        if cached is not None:
            return cached.token
        row = st.capability(capability_id)
        return None if row is None else CapabilityToken.model_validate_json(row.token)

    # --- capabilities: public API ---

    def create_capability(
        self,
        subject: str,
        scope: ChioScope | Mapping[str, Any],
        ttl_seconds: int = 3600,
        capability_id: str | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> CapabilityToken:
        """Issue a signed capability token for ``subject`` with ``scope``, valid ``ttl_seconds``.

        ``capability_id`` may be chosen by the caller (``cap-research-pipeline``). Re-creating an
        existing id returns the stored token if it is still valid and has the same subject, scope and
        rate limit (idempotent provisioning); otherwise :class:`CapabilityError`.
        ``rate_limit=(max_calls, per_seconds)`` limits allowed calls per sliding window.
        """
        subject = _require_str("subject", subject)
        chio_scope = _coerce_scope(scope)
        _check_limits(chio_scope, 0, self.limits, "the scope")
        _refuse_bad_patterns(chio_scope)
        ttl = _positive_int("ttl_seconds", ttl_seconds)
        rate = _coerce_rate_limit(rate_limit)
        if capability_id is None:
            capability_id = "cap-" + "%032x" % _uuid7_int(secure=True)
        else:
            capability_id = _new_capability_id(capability_id)
        now = int(self._clock())
        token = self._sign_token(capability_id, subject, chio_scope, now, now + ttl, [])
        with self._write() as st:
            existing = self._existing(st, capability_id, subject, chio_scope, rate)
            if existing is not None:
                return existing
            self._insert_cap(st, token, None, rate)
        return token

    def _sign_token(
        self,
        capability_id: str,
        subject: str,
        scope: ChioScope,
        issued_at: int,
        expires_at: int,
        chain: list[DelegationLink],
    ) -> CapabilityToken:
        fields: dict[str, Any] = {
            "id": capability_id,
            "issuer": self.public_key_hex,
            "subject": subject,
            "scope": scope,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "delegation_chain": chain,
        }
        unsigned = CapabilityToken.model_construct(**fields, signature="")
        return CapabilityToken(**fields, signature=self._signer.sign_hex(capability_signing_bytes(unsigned)))

    def _existing(
        self,
        st: StoreReader,
        capability_id: str,
        subject: str,
        scope: ChioScope,
        rate: tuple[int, float] | None,
        parent_id: str | None = None,
    ) -> CapabilityToken | None:
        row = st.capability(capability_id)
        if row is None:
            return None
        stored = CapabilityToken.model_validate_json(row.token)
        stored_rate = (row.rate_max, row.rate_per) if row.rate_max is not None else None
        revoked = st.revocation(capability_id) is not None
        same = (
            stored.subject == subject
            and canonical_json(stored.scope.model_dump(exclude_none=True))
            == canonical_json(scope.model_dump(exclude_none=True))
            and stored_rate == rate
            and row.parent_id == parent_id
        )
        now = self._clock()
        if same and not revoked and stored.is_valid_at(int(now)):
            return stored
        why = (
            "it is revoked" if revoked else
            "it has expired" if not stored.is_valid_at(int(now)) else
            "it has a different subject, scope, rate limit or parent"
        )
        raise CapabilityError(
            f"capability id {capability_id!r} already exists and {why}; choose another capability_id "
            "(or omit it to get a fresh one)"
        )

    def _insert_cap(
        self,
        st: StoreWriter,
        token: CapabilityToken,
        parent_id: str | None,
        rate: tuple[int, float] | None,
    ) -> None:
        st.insert_capability(
            CapabilityRow(
                id=token.id,
                token=token.model_dump_json(exclude_none=True),
                parent_id=parent_id,
                subject=token.subject,
                issued_at=token.issued_at,
                expires_at=token.expires_at,
                rate_max=rate[0] if rate else None,
                rate_per=rate[1] if rate else None,
            ),
            self._clock(),
        )

    def get_capability(self, capability_id: str) -> CapabilityToken | None:
        """The stored token with this id, or None."""
        capability_id = _require_str("capability_id", capability_id, max_len=256)
        with self._read() as st:
            row = st.capability(capability_id)
        return CapabilityToken.model_validate_json(row.token) if row else None

    def list_capabilities(self) -> list[CapabilityToken]:
        """Every stored token, oldest first (page after page, each its own short read)."""
        out: list[CapabilityToken] = []
        cursor: str | None = None
        while True:
            page = self.capabilities_page(MAX_PAGE_LIMIT, cursor)
            out += page.items
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    def capabilities_page(self, limit: int | None, cursor: str | None) -> Page[CapabilityToken]:
        """Stored tokens oldest first, one page (see ``Kernel.capabilities_page``)."""
        n = check_limit(limit)
        pos = decode_cursor(cursor, "capabilities", [], (float, str))
        pause = Yielder(self.busy).pause
        pause()
        with self._read() as st:
            rows = st.capabilities_page((pos[0], pos[1]) if pos else None, n + 1)
        items = []
        for i, (_, _, token) in enumerate(rows[:n]):
            if i % 25 == 24:
                pause()
            items.append(CapabilityToken.model_validate_json(token))
        more = len(rows) > n
        return Page(items, encode_cursor("capabilities", [], list(rows[n - 1][:2])) if more else None)

    def capability_info(self, capability_id: str) -> dict[str, Any] | None:
        """Token plus kernel-side state (parent, revoked, rate limit, usage per grant) for one id."""
        capability_id = _require_str("capability_id", capability_id, max_len=256)
        with self._read() as st:
            row = st.capability(capability_id)
            if row is None:
                return None
            rev = st.revocation(capability_id)
            usage = st.usage_of(capability_id)
        return {
            "token": CapabilityToken.model_validate_json(row.token),
            "parent_id": row.parent_id,
            "rate_limit": (row.rate_max, row.rate_per) if row.rate_max is not None else None,
            "revoked": rev is not None,
            "revoked_at": rev[0] if rev else None,
            "revoked_because": rev[1] if rev else None,
            "usage": [{"grant_index": u[0], "invocations": u[1], "cost_units": u[2]} for u in usage],
        }

    def is_revoked(self, capability_id: str) -> bool:
        """Is this capability (or one of its ancestors) revoked?"""
        with self._read() as st:
            cap = self.load(st, capability_id)
            ids = cap.lineage if cap is not None else (capability_id,)
            return st.first_revoked(ids) is not None

    def validate_capability(self, token: CapabilityToken | Mapping[str, Any]) -> tuple[bool, str | None]:
        """``(valid, reason)``: signature, issuer (this kernel or a trusted key), time window,
        revocation (of the token or an ancestor) and delegation chain."""
        tok = _coerce_token(token)
        with self._read() as st:
            error = self._static_check(st, tok)
            if error is not None:
                return False, error
            now = int(self._clock())
            if now < tok.issued_at:
                return False, f"capability {tok.id} is not valid before {_iso(tok.issued_at)}"
            if now >= tok.expires_at:
                return False, f"capability {tok.id} expired at {_iso(tok.expires_at)}; issue a new one"
            lineage = [tok.id] + [link.capability_id for link in reversed(tok.delegation_chain)]
            revoked = st.first_revoked(lineage)
        if revoked is not None:
            which = "it was" if revoked == tok.id else f"its ancestor {revoked} was"
            return False, f"capability {tok.id} is revoked ({which} revoked)"
        refused = self._trust.refused_token(tok)  # a retired fleet signer, read now
        return (False, refused) if refused is not None else (True, None)

    def attenuate_capability(
        self,
        parent: CapabilityToken | Mapping[str, Any] | str,
        new_scope: ChioScope | Mapping[str, Any],
        ttl_seconds: int | None = None,
        capability_id: str | None = None,
        *,
        subject: str | None = None,
    ) -> CapabilityToken:
        """A child token with ``new_scope`` ⊆ the parent's scope and a signed delegation link.

        ``parent`` is a token or the id of a stored one; it must be valid. The child expires at the
        parent's expiry, or ``now + ttl_seconds`` if that is earlier. ``subject`` defaults to the
        parent's subject. Raises :class:`CapabilityError` naming the offending grant if the scope is
        not a subset.
        """
        child_scope = _coerce_scope(new_scope, "new_scope")
        _check_limits(child_scope, 0, self.limits, "the new scope")
        _refuse_bad_patterns(child_scope)
        ttl = _positive_int("ttl_seconds", ttl_seconds) if ttl_seconds is not None else None
        if capability_id is not None:
            capability_id = _new_capability_id(capability_id)
        if subject is not None:
            subject = _require_str("subject", subject)
        if isinstance(parent, str):
            parent_id = _require_str("parent", parent, max_len=256)
            parent_token = self.get_capability(parent_id)
            if parent_token is None:
                raise CapabilityError(f"cannot attenuate unknown capability {parent_id!r}: this kernel never issued it")
        else:
            parent_token = _coerce_token(parent, "parent")
        _check_limits(child_scope, len(parent_token.delegation_chain) + 1, self.limits,
                      f"a child of capability {parent_token.id}")
        valid, reason = self.validate_capability(parent_token)
        if not valid:
            raise CapabilityError(f"cannot attenuate capability {parent_token.id}: {reason}")
        offending = _first_non_subset(child_scope, parent_token.scope)
        if offending is not None:
            raise CapabilityError(
                f"new scope is not a subset of capability {parent_token.id}: {offending}; "
                "narrow the new scope to tools, operations and limits the parent already grants"
            )
        now = int(self._clock())
        expires_at = parent_token.expires_at if ttl is None else min(parent_token.expires_at, now + ttl)
        child_subject = subject if subject is not None else parent_token.subject
        link_body: _LinkBody = {
            "capability_id": parent_token.id,
            "delegator": self.public_key_hex,
            "delegatee": child_subject,
            "attenuations": [],
            "timestamp": now,
        }
        link = DelegationLink(**link_body, signature=self._signer.sign_hex(_link_signing_bytes(link_body)))
        child_id = capability_id if capability_id is not None else "cap-" + "%032x" % _uuid7_int(secure=True)
        chain = [*parent_token.delegation_chain, link]
        child = self._sign_token(child_id, child_subject, child_scope, now, expires_at, chain)
        with self._write() as st:
            if st.capability(parent_token.id) is None:
                # A valid parent from a trusted kernel: remember it so the child's lineage resolves.
                self._insert_cap(st, parent_token, None, None)
            if capability_id is not None:
                # same idempotent provisioning rule as create_capability (same subject, scope, parent)
                existing = self._existing(st, child_id, child_subject, child_scope, None, parent_id=parent_token.id)
                if existing is not None:
                    return existing
            self._insert_cap(st, child, parent_token.id, None)
        return child

    def revoke_capability(self, capability_id: str) -> list[str]:
        """Revoke a capability and all its descendants; returns every id in that subtree (root first).

        Revoking an already revoked capability is allowed (returns the same ids); an unknown id
        raises :class:`CapabilityError`.
        """
        capability_id = _require_str("capability_id", capability_id, max_len=256)
        with self._write() as st:
            if st.capability(capability_id) is None:
                raise CapabilityError(
                    f"cannot revoke unknown capability {capability_id!r}: this kernel never issued it "
                    "(list them with list_capabilities())"
                )
            ids = st.capability_subtree(capability_id)
            st.lock_capabilities(ids)  # concurrent writers: an evaluation counting on them finishes first
            now = self._clock()
            st.insert_revocations(
                [(i, now, "revoked" if i == capability_id else f"ancestor {capability_id} revoked") for i in ids],
            )
        return ids
