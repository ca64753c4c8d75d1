"""Token and spend budgets per tenant and API key, checked in the answer stage.

Debit per delta, not reserve-then-settle: a reservation of prompt + max_tokens would
refuse requests that fit (most answers are far shorter than max_tokens) and could
never stop a stream mid-way. Instead (counters.py does each step atomically):
  1. before generation, `admit` refuses the request when any limit of the tenant or
     key is already used up (RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo),
     else debits the prompt's tokens and their cost at once;
  2. every Delta the answer stage releases is debited before it goes out, and only
     as many of its tokens as every limit still has room for: a Delta that does not
     fit is cut where the budget ends, the stream stops with FINISH_REASON_BUDGET,
     and generation is cancelled;
  3. finish settles the request to the usage the model reported (or refunds it all
     for an answer that came from the cache).
So output tokens never pass a limit, and only a prompt admitted while the limit had
room can cross it: however many replicas share the counters, the tokens counted in
a window exceed the budget by at most one request's prompt tokens (plus the
difference between the router's token estimate and the model's count, which
finish settles). Spend works the same way in nano-dollars.

Tenants without limits cost no counter call until finish records their usage.
"""

import logging
from datetime import datetime, timezone

from services.common.errors import QuotaViolation, ResourceExhausted, Unavailable
from services.router.config import Budget, RouterSettings, TenantSettings
from services.router.counters import DAY, MINUTE, NANO, Counters, Debit, Refusal, Subject, subject_prefix, \
    token_cost, window_bounds
from services.router.metrics import BUDGET_ERRORS, BUDGET_REFUSALS, BUDGET_STOPS
from services.router.stores import StoreError

log = logging.getLogger(__name__)

_LIMIT_NAMES = {MINUTE: "tokens_per_minute", DAY: "usd_per_day"}


def nano_per_token(settings: RouterSettings, model: str, direction: str) -> float:
    """Price of one token of `model` in nano-dollars; models without a price cost 0."""
    price = settings.prices.get(model)
    if price is None:
        return 0.0
    per_1k = price.input_per_1k if direction == "input" else price.output_per_1k
    return per_1k * NANO / 1000


def _subject(prefix: str, budget: Budget) -> Subject:
    return Subject(prefix, budget.tokens_per_minute, round(budget.usd_per_day * NANO),
                   round(budget.usd_per_month * NANO))


def subjects(tenant_id: str, tenant: TenantSettings, key_id: str) -> list[Subject]:
    """The tenant's counters, and its key's when the caller used one."""
    found = [_subject(subject_prefix(tenant_id), tenant.budget)]
    if key_id:
        found.append(_subject(subject_prefix(tenant_id, key_id), tenant.key_budgets.get(key_id, Budget())))
    return found


def over_budget(refusal: Refusal, who: str, budget: Budget) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED naming the limit, with QuotaFailure and RetryInfo (when the window ends)."""
    name = _LIMIT_NAMES.get(refusal.window, "usd_per_month")
    limit = f"{budget.tokens_per_minute} tokens" if refusal.window == MINUTE else f"${getattr(budget, name):g}"
    _, end = window_bounds(refusal.window, refusal.now)
    retry_after_s = max(end - refusal.now, 1.0)
    until = datetime.fromtimestamp(end, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    description = f"{name} budget of {limit} is used up until {until}"
    return ResourceExhausted(f"the {description} for {who}; retry after {retry_after_s:.0f}s",
                             reason="BUDGET_EXCEEDED", metadata={"budget": name, "subject": who},
                             retry_after_s=retry_after_s, quota_violations=[QuotaViolation(who, description)])


class Meter:
    """One request's budget: debits its prompt, then each Delta, and can refund them."""

    def __init__(self, settings: RouterSettings, counters: Counters, subjects: list[Subject], *,
                 limited: bool, debit: Debit = Debit()):
        self._settings = settings
        self._counters = counters
        self._subjects = subjects
        self.limited = limited
        self.debit = debit

    async def take(self, tokens: int, model: str) -> int:
        """How many of `tokens` output tokens of `model` may go out (all of them without limits)."""
        if not self.limited or tokens <= 0:
            return max(tokens, 0)
        price = nano_per_token(self._settings, model, "output")
        try:
            taken = await self._counters.debit(self._subjects, tokens, price)
        except StoreError as err:
            BUDGET_ERRORS.labels("debit").inc()
            log.warning("budget debit skipped, the answer goes on unmetered: %s", err)
            self.limited = False
            return tokens
        self.debit = Debit(self.debit.tokens + taken, self.debit.nano + token_cost(taken, price))
        if taken < tokens:
            BUDGET_STOPS.inc()
        return taken

    async def refund(self) -> None:
        """Gives back what was debited (a request that produced nothing)."""
        if not self.debit.tokens and not self.debit.nano:
            return
        try:
            await self._counters.record(self._subjects, {"tokens": -self.debit.tokens, "cost": -self.debit.nano})
        except StoreError as err:
            BUDGET_ERRORS.labels("refund").inc()
            log.warning("budget refund skipped: %s", err)
        self.debit = Debit()


class Budgets:
    def __init__(self, settings: RouterSettings, counters: Counters):
        self._settings = settings
        self._counters = counters

    async def admit(self, tenant_id: str, tenant: TenantSettings, key_id: str, model: str,
                    input_tokens: int) -> Meter:
        """A Meter for a request whose prompt has `input_tokens`, or RESOURCE_EXHAUSTED when over budget."""
        found = subjects(tenant_id, tenant, key_id)
        if not any(subject.limited for subject in found):
            return Meter(self._settings, self._counters, found, limited=False)
        nano = token_cost(input_tokens, nano_per_token(self._settings, model, "input"))
        try:
            refusal = await self._counters.admit(found, input_tokens, nano)
        except StoreError as err:
            BUDGET_ERRORS.labels("admit").inc()
            if not self._settings.budget_fail_open:
                raise Unavailable("the budget cannot be checked right now; retry shortly",
                                  reason="BUDGET_UNAVAILABLE", retry_after_s=1.0) from None
            log.warning("budget check skipped, the request goes on unmetered: %s", err)
            return Meter(self._settings, self._counters, found, limited=False)
        if refusal is not None:
            BUDGET_REFUSALS.labels(_LIMIT_NAMES.get(refusal.window, "usd_per_month")).inc()
            if refusal.subject == 0:
                raise over_budget(refusal, f"tenant:{tenant_id}", tenant.budget)
            raise over_budget(refusal, f"key:{key_id}", tenant.key_budgets.get(key_id, Budget()))
        return Meter(self._settings, self._counters, found, limited=True, debit=Debit(input_tokens, nano))
