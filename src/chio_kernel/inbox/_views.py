"""The inbox's pages and form handlers (docs/inbox.md). Every kernel call runs in the thread pool;
every POST goes through :func:`chio_kernel.inbox._session.read_form` (the CSRF check)."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from chio_kernel._receipt_log import VERDICTS
from chio_kernel._errors import (
    ApprovalConflictError,
    ApprovalError,
    ApprovalNotFoundError,
    ChioKernelError,
    KernelInputError,
    KernelKeyRetiredError,
    StoreUnavailableError,
)
from chio_kernel.inbox._present import (
    RUN_KEYS,
    approval_card,
    budget_row,
    pretty_json,
    receipt_row,
    state_key,
    state_text,
    when,
)
from chio_kernel.inbox._session import FormError, Session, read_form, set_cookie

__all__ = ["ROUTES_SPEC"]

Handler = Callable[[Request], Awaitable[Response]]
#: Roles that may sign in (a workload credential evaluates calls; it never answers them).
SIGN_IN_ROLES = ("approver", "operator")


class _SignIn(Exception):
    """The request needs a signed-in approver: send the browser to the sign-in page."""


def _unavailable(err: BaseException) -> bool:
    if isinstance(err, (StoreUnavailableError, KernelKeyRetiredError, sqlite3.Error)):
        return True
    return isinstance(err, RuntimeError) and "closed" in str(err)


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    """A page: the template with the person, the CSRF token and the mount prefix."""
    state = request.app.state
    session = getattr(request.state, "session", None) or state.sessions.new()
    request.state.session = session
    response: Response = state.templates.TemplateResponse(
        request, name, {"base": _base(request), "session": session, "who": session.principal, **context},
        status_code=status,
    )
    set_cookie(response, request, session, _base(request))
    return response


def page(handler: Handler) -> Handler:
    """Sign-in redirects, refused forms and an unavailable kernel as pages, never a traceback."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except _SignIn:
            return RedirectResponse(f"{_base(request)}/signin", status_code=303)
        except FormError as err:
            return render(request, "error.html", err.status, title="Refused", message=err.message)
        except Exception as err:  # noqa: BLE001 - an unavailable kernel is a page; anything else re-raised
            if not _unavailable(err):
                raise
            return render(
                request, "error.html", 503, title="Kernel unavailable",
                message=f"The kernel is unavailable ({str(err)[:200]}). Nothing was answered; try again when it is back.",
            )

    return wrapped


async def _principal(request: Request) -> tuple[Session, Any]:
    """The signed-in person (their credential authenticated again), else :class:`_SignIn`."""
    state = request.app.state
    session = state.sessions.get(request)
    request.state.session = session
    if session is None or session.token is None:
        raise _SignIn
    principal = await run_in_threadpool(state.kernel.authenticate, session.token)
    if principal is None or principal.role not in SIGN_IN_ROLES:  # revoked since sign-in
        state.sessions.drop(session)
        request.state.session = None
        raise _SignIn
    session.principal = principal
    return session, principal


# --- sign-in ---


@page
async def signin_form(request: Request) -> Response:
    request.state.session = request.app.state.sessions.get(request)
    return render(request, "signin.html")


@page
async def signin(request: Request) -> Response:
    state = request.app.state
    session = state.sessions.get(request)
    request.state.session = session
    fields = await read_form(request, session)
    token = fields.get("token", "").strip()
    principal = await run_in_threadpool(state.kernel.authenticate, token) if token else None
    if principal is None or principal.role not in SIGN_IN_ROLES:
        message = (
            "That credential is unknown or revoked." if principal is None else
            f"A {principal.role} credential cannot sign in to the inbox: it is for the workers that make the "
            "calls, never for answering them. Sign in with an approver credential "
            "(`chio-durable credentials add NAME --role approver`)."
        )
        return render(request, "signin.html", 401 if principal is None else 403, error=message)
    assert session is not None
    state.sessions.drop(session)
    request.state.session = state.sessions.new(token, principal)
    response = RedirectResponse(f"{_base(request)}/approvals", status_code=303)
    set_cookie(response, request, request.state.session, _base(request))
    return response


@page
async def signout(request: Request) -> Response:
    state = request.app.state
    session = state.sessions.get(request)
    await read_form(request, session)
    assert session is not None
    state.sessions.drop(session)
    return RedirectResponse(f"{_base(request)}/signin", status_code=303)


# --- approvals ---


def _newest(approval: dict[str, Any]) -> tuple[int, str]:
    """Newest first: by the time asked, then by id (UUIDv7 ids grow with time within a second)."""
    return int(approval["created_at"]), str(approval["id"])


def _cards(kernel: Any, approvals: list[dict[str, Any]], links: Any) -> list[dict[str, Any]]:
    now = time.time()
    return [approval_card(a, kernel.get_receipt(a["pending_receipt_id"]), links, now) for a in approvals]


@page
async def approvals(request: Request) -> Response:
    await _principal(request)
    state = request.app.state

    def load() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pending = sorted(state.kernel.list_approvals("pending"), key=_newest, reverse=True)
        recent = sorted(state.kernel.list_approvals(None), key=lambda a: a["resolved_at"] or a["created_at"], reverse=True)
        answered = [a for a in recent if a["status"] != "pending"][:20]
        return _cards(state.kernel, pending, state.links), _cards(state.kernel, answered, state.links)

    pending, answered = await run_in_threadpool(load)
    return render(request, "approvals.html", pending=pending, answered=answered)


def _approval_id(request: Request) -> str:
    aid = str(request.path_params["approval_id"])
    if not aid or len(aid) > 256:
        raise FormError(404, "An approval id is 1 to 256 characters.")
    return aid


def _detail(kernel: Any, links: Any, aid: str) -> dict[str, Any] | None:
    approval = kernel.get_approval(aid)
    if approval is None:
        return None
    (card,) = _cards(kernel, [approval], links)
    out: dict[str, Any] = {"item": card, "state": state_text(approval), "key": state_key(approval)}
    for name, rid in (("resolution", approval.get("resolution_receipt_id")), ("allow", approval.get("consumed_receipt_id"))):
        receipt = kernel.get_receipt(rid) if rid else None
        if receipt is not None:
            out[name] = {
                "id": receipt.id, "verdict": receipt.decision.verdict, "reason": receipt.decision.reason or "",
                "time": when(receipt.timestamp), "valid": kernel.verify_receipt(receipt),
                "json": pretty_json(receipt.model_dump(mode="json", exclude_none=True)),
            }
    return out


async def _approval_page(request: Request, status: int = 200, message: str | None = None) -> Response:
    """One approval: its card, where it stands, its resolution and allow receipts."""
    state = request.app.state
    aid = _approval_id(request)
    detail = await run_in_threadpool(_detail, state.kernel, state.links, aid)
    if detail is None:
        return render(request, "error.html", 404, title="No such approval", message=f"There is no approval {aid} in this kernel.")
    return render(request, "approval.html", status, message=message, **detail)


@page
async def approval(request: Request) -> Response:
    await _principal(request)
    return await _approval_page(request)


@page
async def approval_state(request: Request) -> Response:
    await _principal(request)
    aid = _approval_id(request)
    found = await run_in_threadpool(request.app.state.kernel.get_approval, aid)
    if found is None:
        return JSONResponse({"key": "unknown", "text": f"There is no approval {aid}."}, status_code=404)
    return JSONResponse({"key": state_key(found), "status": found["status"], "text": state_text(found)})


def _answer_refused(err: ChioKernelError) -> tuple[int, str]:
    """A refused answer as a status and a sentence (409: answered elsewhere or expired)."""
    if isinstance(err, ApprovalNotFoundError):
        return 404, "There is no such approval in this kernel."
    if isinstance(err, ApprovalConflictError):
        return 409, f"Your answer was not recorded: {err}."
    if type(err).__name__ == "ApprovalForbiddenError":
        return 403, f"Your answer was not recorded: {err}."
    return 422, f"Your answer was not recorded: {err}."


@page
async def answer(request: Request) -> Response:
    session, principal = await _principal(request)
    state = request.app.state
    aid = _approval_id(request)
    fields = await read_form(request, session)
    outcome = fields.get("outcome")
    if outcome not in ("approved", "denied"):
        raise FormError(422, "Choose Approve or Deny.")
    reason = fields.get("reason", "").strip() or None
    try:
        await run_in_threadpool(lambda: state.kernel.respond_approval(aid, outcome, reason, approver=principal))
    except (ApprovalError, KernelInputError) as err:
        status, message = _answer_refused(err)
        return await _approval_page(request, status, message)
    return RedirectResponse(f"{_base(request)}/approvals/{aid}", status_code=303)


# --- receipts, budgets, webhooks ---


def _receipts(kernel: Any, links: Any, capability: str | None, verdict: str | None, run: str | None) -> list[dict[str, Any]]:
    query: dict[str, Any] = {"capability_id": capability, "verdict": verdict, "newest_first": True, "limit": 200}
    if run:
        found: dict[int, Any] = {}
        for key, _ in RUN_KEYS:
            found.update(kernel.query_receipts(**query, metadata={key: run}))
        pairs = sorted(found.items(), reverse=True)[:200]
    else:
        pairs = kernel.query_receipts(**query)
    return [receipt_row(seq, r, links) for seq, r in pairs]


@page
async def receipts(request: Request) -> Response:
    await _principal(request)
    state = request.app.state
    q = request.query_params
    capability, run = (q.get("capability") or "").strip() or None, (q.get("run") or "").strip() or None
    verdict = q.get("verdict") or None
    if verdict is not None and verdict not in VERDICTS:
        raise FormError(422, f"Filter the verdict by one of {', '.join(VERDICTS)}.")

    def load() -> tuple[list[dict[str, Any]], Any]:
        return _receipts(state.kernel, state.links, capability, verdict, run), state.kernel.verify_chain()

    try:
        rows, chain = await run_in_threadpool(load)
    except KernelInputError as err:
        raise FormError(422, f"That filter cannot be used: {err}.") from None
    filters = {"capability": capability or "", "verdict": verdict or "", "run": run or ""}
    return render(request, "receipts.html", rows=rows, chain=chain, filters=filters, verdicts=VERDICTS)


@page
async def budgets(request: Request) -> Response:
    await _principal(request)
    kernel = request.app.state.kernel

    def load() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for cap in kernel.list_capabilities():
            rows += [budget_row(r) for r in kernel.budgets(cap.id) if not r.get("inherited")]
        return rows

    return render(request, "budgets.html", rows=await run_in_threadpool(load))


@page
async def webhooks(request: Request) -> Response:
    await _principal(request)
    outbox = request.app.state.kernel.webhooks
    dead, recent = await run_in_threadpool(lambda: (outbox.deliveries("dead"), outbox.deliveries(None, 50)))

    def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**d, "created": when(d["created_at"]), "next": when(d["next_at"])} for d in rows]

    return render(request, "webhooks.html", dead=shown(dead), recent=shown(recent))


@page
async def webhook_retry(request: Request) -> Response:
    session, _ = await _principal(request)
    await read_form(request, session)
    did = str(request.path_params["delivery_id"])
    if not await run_in_threadpool(request.app.state.kernel.webhooks.retry, did):
        raise FormError(409, f"Delivery {did} is not a dead letter (any more); nothing to retry.")
    return RedirectResponse(f"{_base(request)}/webhooks", status_code=303)


async def home(request: Request) -> Response:
    return RedirectResponse(f"{_base(request)}/approvals", status_code=303)


#: (path, handler, methods) of every page; ``_app`` builds the routes.
ROUTES_SPEC: tuple[tuple[str, Handler, tuple[str, ...]], ...] = (
    ("/", home, ("GET",)),
    ("/signin", signin_form, ("GET",)),
    ("/signin", signin, ("POST",)),
    ("/signout", signout, ("POST",)),
    ("/approvals", approvals, ("GET",)),
    ("/approvals/{approval_id}", approval, ("GET",)),
    ("/approvals/{approval_id}/state", approval_state, ("GET",)),
    ("/approvals/{approval_id}/answer", answer, ("POST",)),
    ("/receipts", receipts, ("GET",)),
    ("/budgets", budgets, ("GET",)),
    ("/webhooks", webhooks, ("GET",)),
    ("/webhooks/{delivery_id}/retry", webhook_retry, ("POST",)),
)
