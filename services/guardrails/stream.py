"""Streaming-safe output checking: a sliding window that never releases unchecked text.

Text is released only up to a cut point chosen so that nothing at or after it can
still turn out to be part of a finding:
  - at least `window` characters stay held back, more than the longest PII item,
    canary (as spread out as a caught one can be: "9F-3A-1C") or blocklist term,
    so anything that starts before the cut is complete;
  - the cut falls on whitespace, so tokens longer than the window (JWTs, API keys)
    are held until they end (up to `max_hold` characters);
  - the cut never splits a finding; an unterminated private-key block is itself a
    finding, from its BEGIN line on, so it is held until its END line arrives.
Released text has the policy's actions applied and the request's placeholders
restored. A blocking finding ends the stream; what was released before stays
released (it was safe when released). Finding offsets count from the start of the
whole answer.
"""

from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.guardrails import metrics
from services.guardrails.actions import Finding, Placeholders, restore
from services.guardrails.checker import Guard, Verdict
from services.guardrails.config import CANARY_ENTITY, Action, Policy
from services.guardrails.terms import canary_span_limit

# Released text kept in front of the held text when analysing it, so context words
# ("call me at") still lift a finding's score.
_CONTEXT_CHARS = 64
# Analyse once this many characters beyond the window have arrived, not on every
# token: fewer analyses, at the price of holding a little more text.
_MIN_RELEASE = 16


@dataclass
class StreamStep:
    safe_text: str = ""
    findings: list[Finding] = field(default_factory=list)
    verdict: Verdict = Verdict.ALLOW
    reasons: list[str] = field(default_factory=list)
    final: bool = False


class OutputStream:
    def __init__(self, guard: Guard, policy: Policy, tenant: str, canaries: tuple[str, ...],
                 restore_map: dict[str, str] | None, window: int, max_hold: int, max_chars: int):
        longest_term = max(canary_span_limit(canaries), *(len(term) for term in policy.blocklist), 0)
        self.window = max(window, longest_term + 1)
        self.max_hold = max(max_hold, self.window + _MIN_RELEASE)
        self.max_chars = max_chars
        self._guard, self._policy, self._tenant = guard, policy, tenant
        self._canaries = canaries
        self._restore = restore_map or {}
        self._placeholders = Placeholders(self._restore)
        self._held = ""       # received, not yet released (original text)
        self._context = ""    # tail of the released original text
        self._released = 0    # characters of original text released so far
        self._received = 0
        self.blocked = False
        self.redacted = False
        self.canary_leaked = False

    def feed(self, chunk: str) -> StreamStep | None:
        """Takes the next chunk; returns a step when text can be released or the stream blocks."""
        self._received += len(chunk)
        if self._received > self.max_chars:
            raise InvalidArgument(f"the streamed answer passed {self.max_chars} characters "
                                  "(setting guardrails.max_stream_chars)", field="chunk")
        self._held += chunk
        if len(self._held) < self.window + _MIN_RELEASE:
            return None
        return self._step(final=False)

    def finish(self) -> StreamStep:
        """The caller half-closed: check and release everything held."""
        return self._step(final=True)

    def _cut(self, findings: list[Finding]) -> int:
        held = self._held
        cut = len(held) - self.window
        if cut <= 0:
            return 0
        space = max(held.rfind(" ", 0, cut), held.rfind("\n", 0, cut), held.rfind("\t", 0, cut))
        if space >= 0:
            cut = space + 1
        elif len(held) <= self.max_hold:
            return 0
        for finding in findings:
            if finding.start < cut < finding.end:
                cut = finding.start
        return cut

    def _step(self, final: bool) -> StreamStep:
        context = self._context
        try:
            findings = self._guard.find_items(context + self._held, self._policy, self._canaries)
        except Exception as err:  # the policy decides: block, or release unchecked
            return self._failed(err, final)
        # Offsets relative to the held text; findings inside the released context were handled.
        local = [Finding(f.entity, max(f.start - len(context), 0), f.end - len(context), f.score, f.action)
                 for f in findings if f.end > len(context)]
        blocking = [f for f in local if f.action is Action.BLOCK]
        if blocking:
            return self._block(blocking, local)
        cut = len(self._held) if final else self._cut(local)
        released = [f for f in local if f.end <= cut]
        segment = self._held[:cut]
        text = restore(self._guard.redactor.apply(segment, released, self._tenant, self._placeholders),
                       self._restore)
        shifted = [Finding(f.entity, f.start + self._released, f.end + self._released, f.score, f.action)
                   for f in released]
        self._context = (self._context + segment)[-_CONTEXT_CHARS:]
        self._held = self._held[cut:]
        self._released += cut
        replaced = any(f.action in (Action.REDACT, Action.MASK, Action.HASH) for f in released)
        self.redacted = self.redacted or replaced
        for finding in shifted:
            metrics.FINDINGS.labels("stream", finding.entity, finding.action.value).inc()
        verdict = Verdict.REDACT if self.redacted else Verdict.ALLOW
        if final:
            metrics.VERDICTS.labels("stream", verdict.value, "pii").inc()
        return StreamStep(text, shifted, verdict, [], final)

    def _failed(self, err: Exception, final: bool) -> StreamStep:
        outcome = self._guard.failed("stream", self._policy, self._held, err)
        metrics.VERDICTS.labels("stream", outcome.verdict.value, "error").inc()
        if outcome.verdict is Verdict.BLOCK:
            self.blocked = True
            self._held = ""
            return StreamStep("", [], Verdict.BLOCK, outcome.reasons, True)
        text = restore(self._held, self._restore)
        self._released += len(self._held)
        self._context = (self._context + self._held)[-_CONTEXT_CHARS:]
        self._held = ""
        return StreamStep(text, [], Verdict.REDACT if self.redacted else Verdict.ALLOW, outcome.reasons, final)

    def _block(self, blocking: list[Finding], findings: list[Finding]) -> StreamStep:
        self.blocked = True
        self.canary_leaked = any(f.entity == CANARY_ENTITY for f in blocking)
        entities = sorted({f.entity for f in blocking})
        shifted = [Finding(f.entity, f.start + self._released, f.end + self._released, f.score, f.action)
                   for f in findings]
        for finding in shifted:
            metrics.FINDINGS.labels("stream", finding.entity, finding.action.value).inc()
        stage = "canary" if self.canary_leaked else "blocklist" if "BLOCKLIST" in entities else "pii"
        metrics.VERDICTS.labels("stream", Verdict.BLOCK.value, stage).inc()
        reasons = ["blocked by policy: " + ", ".join(entities)]
        if self.canary_leaked:
            reasons.insert(0, "system-prompt canary found in the answer")
        self._held = ""
        return StreamStep("", shifted, Verdict.BLOCK, reasons, True)
