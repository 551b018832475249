"""The access policy's decision for a read, taken in the worker thread that then serves the read.

A read by id needs the store twice: for the policy's decision (who holds the record, the patient's Consents:
DESIGN.md "Access") and for the record. Taken in two worker threads, that is two hand-offs from the event
loop and back on every read. The authentication middleware, the one decision point, still states the
decision every such request needs (:class:`PendingDecision`); the routes of the FHIR API take it first, in
the thread where they then read (:func:`decided_first`, installed on every route by ``fhir_api/routes.py``);
and whatever answer under 400 would leave without it (a route that did not take it) waits at its first byte
while the middleware takes it, so nothing is disclosed undecided (``AuthMiddleware``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from ehr_core.errors import Forbidden, RecordError
from fhir_api.access import Decision
from fhir_api.auth.decision import Caller, policy
from fhir_api.auth.needs import Need
from fhir_api.threads import in_thread

__all__ = ["PendingDecision", "decided_first", "pending"]

#: The decision the current request still needs (None: none, or not under authentication).
pending: contextvars.ContextVar[PendingDecision | None] = contextvars.ContextVar("ehr_pending_decision", default=None)


class PendingDecision:
    """The access policy's decision one request needs: taken once, where it is first asked for."""

    def __init__(self, scope: Scope, caller: Caller, need: Need, reason: str | None) -> None:
        self.scope = scope
        self.caller = caller
        self.need = need
        self.reason = reason
        self.decision: Decision | None = None
        self.refusal: RecordError | None = None

    @property
    def decided(self) -> bool:
        return self.decision is not None or self.refusal is not None

    def settle(self) -> None:
        """Take the decision (blocking: in a worker thread) unless taken; raise the refusal if refused."""
        if self.refusal is not None:
            raise self.refusal
        if self.decision is not None:
            return
        try:
            decision = policy(Request(self.scope), self.caller, self.need, self.reason)
        except RecordError as error:  # e.g. a break-the-glass access that could not be recorded (503)
            self.refusal = error
            raise
        if not decision.permitted:
            need = self.need
            what = f"{need.target[0]}/{need.target[1]}" if need.target else f"Patient/{need.patient_operation}"
            self.refusal = Forbidden(
                f"{what} holds records of {', '.join(decision.owners)}; {self.caller.claims['institution']} may read "
                "them only with the patient's active Consent, an accepted referral, or break-the-glass "
                "(X-EHR-Break-Glass: reason)"
            )
            self.decision = decision
            raise self.refusal
        state = self.scope.setdefault("state", {})
        if decision.basis in ("consent", "referral"):
            # The audit entry says under which grant another institution's record was read.
            state["ehr_access"] = decision.basis
            state["ehr_access_grants"] = decision.grants
        if decision.basis == "break-the-glass":
            state["ehr_break_glass"] = True
        self.decision = decision

    async def settled(self) -> None:
        """:meth:`settle` from the event loop (a worker thread when it is still to be taken)."""
        if not self.decided:
            await in_thread(self.settle)
        elif self.refusal is not None:
            raise self.refusal


def decided_first(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint``, taking the request's pending decision before it runs: in the same worker thread when it is
    a plain function, else in a thread of its own before the coroutine. A generator is left as it is: the
    middleware takes the decision before its answer's first byte.

    A plain function is handed to a request thread here (fhir_api/threads.py) rather than left to FastAPI,
    whose hand-off is anyio's: the same threads as every other hand-off, and less work on the event loop."""
    if inspect.isgeneratorfunction(endpoint) or inspect.isasyncgenfunction(endpoint):
        return endpoint
    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def asynchronous(*args: Any, **kwargs: Any) -> Any:
            due = pending.get()
            if due is not None:
                await due.settled()
            return await endpoint(*args, **kwargs)

        return asynchronous

    def synchronous(*args: Any, **kwargs: Any) -> Any:
        due = pending.get()
        if due is not None:
            due.settle()
        return endpoint(*args, **kwargs)

    @functools.wraps(endpoint)  # FastAPI reads the parameters through __wrapped__: the endpoint's own
    async def handed_off(*args: Any, **kwargs: Any) -> Any:
        return await in_thread(synchronous, *args, **kwargs)

    return handed_off
