"""Usage counters per tenant (and API key) and window: atomic in Redis, or in process.

Every subject (a tenant, or one key of a tenant) has one hash per window: the current
minute, UTC day and UTC month. The fields count answered requests, input, output and
total tokens, cost and cache savings (in nano-dollars, 1e-9 USD, so Redis adds
integers exactly) and the tier mix. Budgets read the same hashes: `tokens` of the
minute window for tokens_per_minute, `cost` of the day and month windows for spend.

Three operations change them, each one atomic step (a Lua script in Redis, one
synchronous block in process), so replicas never interleave a check with a debit:
  admit   refuses when a limit of any subject is already used up, else debits the
          request's input tokens and their cost to every subject;
  debit   takes as many of `tokens` as every limit has room for (maybe 0), debits
          those and says how many it took;
  record  adds fields as they are (finish's settlement; may be negative).
Redis reads its own clock (TIME) inside each script, so replicas with skewed
clocks agree on window boundaries. The scripts compute keys from the subject
prefixes they are given, so they need one Redis (with replicas), not Redis Cluster.
"""

import calendar
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.router.stores import StoreError

USAGE_PREFIX = "llmsuite:router:usage:"
NANO = 1_000_000_000

MINUTE, DAY, MONTH = "m", "d", "M"
WINDOWS = (MINUTE, DAY, MONTH)
# Each window's hash outlives the window, so a read at its end still sees it.
_TTL_S = {MINUTE: 120, DAY: 2 * 86_400, MONTH: 62 * 86_400}

FIELDS = ("requests", "input_tokens", "output_tokens", "tokens", "cost", "savings",
          "tier_cache", "tier_light", "tier_full")


def subject_prefix(tenant: str, key_id: str = "") -> str:
    """The key prefix of a tenant's counters, or of one of its keys' (hashed: ids are client data)."""
    digest = hashlib.sha256(f"{tenant}\x00{key_id}".encode("utf-8")).hexdigest()[:32]
    return USAGE_PREFIX + digest


@dataclass(frozen=True)
class Subject:
    """One set of counters with its limits (0: unlimited)."""

    prefix: str
    tokens_per_minute: int = 0
    nano_per_day: int = 0
    nano_per_month: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.tokens_per_minute or self.nano_per_day or self.nano_per_month)


@dataclass(frozen=True)
class Debit:
    """What one request has debited to the counters so far (finish settles the rest)."""

    tokens: int = 0
    nano: int = 0


@dataclass(frozen=True)
class Refusal:
    """Admission refused: which subject (its position) ran out in which window, and when."""

    subject: int
    window: str
    now: float


# --- windows: the same arithmetic as the Lua prelude below ---------------------------

def month_index(days: int) -> int:
    """yyyymm of a day counted from 1970-01-01 (UTC)."""
    day = datetime.fromtimestamp(days * 86_400, tz=timezone.utc)
    return day.year * 100 + day.month


def window_keys(prefix: str, now: float) -> dict[str, str]:
    days = int(now // 86_400)
    return {MINUTE: f"{prefix}:{MINUTE}:{int(now // 60)}", DAY: f"{prefix}:{DAY}:{days}",
            MONTH: f"{prefix}:{MONTH}:{month_index(days)}"}


def window_bounds(window: str, now: float) -> tuple[float, float]:
    """Start and end (unix seconds) of the window that holds `now`."""
    if window == MINUTE:
        start = now // 60 * 60
        return start, start + 60
    if window == DAY:
        start = now // 86_400 * 86_400
        return start, start + 86_400
    day = datetime.fromtimestamp(now, tz=timezone.utc)
    start = datetime(day.year, day.month, 1, tzinfo=timezone.utc)
    days = calendar.monthrange(day.year, day.month)[1]
    return start.timestamp(), start.timestamp() + days * 86_400


# --- the arithmetic, shared by the in-process counters and mirrored in Lua -------------

def refused(subject: Subject, used: dict[str, dict[str, int]]) -> str | None:
    """The window whose limit `subject` has used up, or None. `used`: window -> fields."""
    if subject.tokens_per_minute and used[MINUTE].get("tokens", 0) >= subject.tokens_per_minute:
        return MINUTE
    if subject.nano_per_day and used[DAY].get("cost", 0) >= subject.nano_per_day:
        return DAY
    if subject.nano_per_month and used[MONTH].get("cost", 0) >= subject.nano_per_month:
        return MONTH
    return None


def room(subject: Subject, used: dict[str, dict[str, int]], tokens: int, nano_per_token: float) -> int:
    """How many of `tokens` fit every limit of `subject` (0 to tokens)."""
    fits = tokens
    if subject.tokens_per_minute:
        fits = min(fits, subject.tokens_per_minute - used[MINUTE].get("tokens", 0))
    if nano_per_token > 0:
        for window, limit in ((DAY, subject.nano_per_day), (MONTH, subject.nano_per_month)):
            if limit:
                fits = min(fits, int((limit - used[window].get("cost", 0)) // nano_per_token))
    return max(fits, 0)


def token_cost(tokens: int, nano_per_token: float) -> int:
    return int(tokens * nano_per_token + 0.5)


class Counters(Protocol):
    async def admit(self, subjects: Sequence[Subject], tokens: int, nano: int) -> Refusal | None: ...

    async def debit(self, subjects: Sequence[Subject], tokens: int, nano_per_token: float) -> int: ...

    async def record(self, subjects: Sequence[Subject], fields: dict[str, int]) -> None: ...

    async def read(self, subject: Subject, window: str) -> tuple[dict[str, int], float]:
        """The window's fields and the time now (by the counters' clock)."""

    async def close(self) -> None: ...


class MemoryCounters:
    """Counters in this process, for one replica; each call runs without awaiting, so it is atomic."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._hashes: dict[str, tuple[float, dict[str, int]]] = {}
        self._next_sweep = 0.0

    def _used(self, prefix: str, now: float) -> dict[str, dict[str, int]]:
        used = {}
        for window, key in window_keys(prefix, now).items():
            entry = self._hashes.get(key)
            used[window] = entry[1] if entry and entry[0] > now else {}
        return used

    def _add(self, subjects: Sequence[Subject], fields: dict[str, int], now: float) -> None:
        self._sweep(now)
        for subject in subjects:
            for window, key in window_keys(subject.prefix, now).items():
                expires, values = self._hashes.get(key, (0.0, {}))
                if expires <= now:
                    values = {}
                for name, value in fields.items():
                    values[name] = values.get(name, 0) + value
                self._hashes[key] = (max(expires, now + _TTL_S[window]), values)

    def _sweep(self, now: float) -> None:
        # Finished windows are dropped once a minute, so memory follows the active tenants.
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for key in [key for key, (expires, _) in self._hashes.items() if expires <= now]:
            del self._hashes[key]

    async def admit(self, subjects: Sequence[Subject], tokens: int, nano: int) -> Refusal | None:
        now = self._clock()
        for index, subject in enumerate(subjects):
            window = refused(subject, self._used(subject.prefix, now))
            if window is not None:
                return Refusal(index, window, now)
        self._add(subjects, {"tokens": tokens, "cost": nano}, now)
        return None

    async def debit(self, subjects: Sequence[Subject], tokens: int, nano_per_token: float) -> int:
        now = self._clock()
        taken = min([room(s, self._used(s.prefix, now), tokens, nano_per_token) for s in subjects] + [tokens])
        if taken:
            self._add(subjects, {"tokens": taken, "cost": token_cost(taken, nano_per_token)}, now)
        return taken

    async def record(self, subjects: Sequence[Subject], fields: dict[str, int]) -> None:
        self._add(subjects, fields, self._clock())

    async def read(self, subject: Subject, window: str) -> tuple[dict[str, int], float]:
        now = self._clock()
        return dict(self._used(subject.prefix, now)[window]), now

    async def close(self) -> None:
        self._hashes.clear()


# The Lua side of the same arithmetic. `now` is ARGV[1]: empty reads Redis' clock
# (production); tests pass a time to pin a window boundary.
_PRELUDE = """
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- yyyymm of a day counted from 1970-01-01 (civil-from-days, proleptic Gregorian).
local function month_index(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 100 + m
end
local TTL = {120, 172800, 5356800}
local function windows(prefix, now)
  local days = math.floor(now / 86400)
  return {string.format('%s:m:%d', prefix, math.floor(now / 60)), string.format('%s:d:%d', prefix, days),
          string.format('%s:M:%d', prefix, month_index(days))}
end
local function used(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end
local function add(keys, field, value)
  if value == 0 then return end
  for i = 1, 3 do redis.call('HINCRBY', keys[i], field, string.format('%d', value)) end
end
-- Each window's hash expires a while after its window; set once, when it is new.
local function expire(keys)
  for i = 1, 3 do
    if redis.call('TTL', keys[i]) < 0 then redis.call('EXPIRE', keys[i], TTL[i]) end
  end
end
-- Subjects from ARGV[first]: count, then prefix, tokens/min, nano/day, nano/month each.
local function subjects(first, now)
  local list = {}
  for i = 1, tonumber(ARGV[first]) do
    local at = first + (i - 1) * 4
    list[i] = {keys = windows(ARGV[at + 1], now), tpm = tonumber(ARGV[at + 2]),
               day = tonumber(ARGV[at + 3]), month = tonumber(ARGV[at + 4])}
  end
  return list
end
"""

# ARGV: now, tokens, nano, subjects...  Returns {subject (1-based; 0: admitted), window, now}.
_ADMIT = _PRELUDE + """
local now = clock(ARGV[1])
local list = subjects(4, now)
for i, s in ipairs(list) do
  if s.tpm > 0 and used(s.keys[1], 'tokens') >= s.tpm then return {i, 'm', tostring(now)} end
  if s.day > 0 and used(s.keys[2], 'cost') >= s.day then return {i, 'd', tostring(now)} end
  if s.month > 0 and used(s.keys[3], 'cost') >= s.month then return {i, 'M', tostring(now)} end
end
for _, s in ipairs(list) do
  add(s.keys, 'tokens', tonumber(ARGV[2]))
  add(s.keys, 'cost', tonumber(ARGV[3]))
  expire(s.keys)
end
return {0, '', tostring(now)}
"""

# ARGV: now, tokens, nano per token, subjects...  Returns the tokens taken.
_DEBIT = _PRELUDE + """
local now = clock(ARGV[1])
local list = subjects(4, now)
local npt = tonumber(ARGV[3])
local fits = tonumber(ARGV[2])
for _, s in ipairs(list) do
  if s.tpm > 0 then fits = math.min(fits, s.tpm - used(s.keys[1], 'tokens')) end
  if npt > 0 and s.day > 0 then fits = math.min(fits, math.floor((s.day - used(s.keys[2], 'cost')) / npt)) end
  if npt > 0 and s.month > 0 then fits = math.min(fits, math.floor((s.month - used(s.keys[3], 'cost')) / npt)) end
end
if fits < 0 then fits = 0 end
for _, s in ipairs(list) do
  add(s.keys, 'tokens', fits)
  add(s.keys, 'cost', math.floor(fits * npt + 0.5))
  expire(s.keys)
end
return fits
"""

# ARGV: now, field count, (field, value)..., subjects...
_RECORD = _PRELUDE + """
local now = clock(ARGV[1])
local count = tonumber(ARGV[2])
local list = subjects(3 + count * 2, now)
for _, s in ipairs(list) do
  for i = 1, count do
    add(s.keys, ARGV[1 + i * 2], tonumber(ARGV[2 + i * 2]))
  end
  expire(s.keys)
end
return 1
"""

# ARGV: now, prefix, window index (1 minute, 2 day, 3 month). Returns {now, field, value, ...}.
_READ = _PRELUDE + """
local now = clock(ARGV[1])
local reply = redis.call('HGETALL', windows(ARGV[2], now)[tonumber(ARGV[3])])
table.insert(reply, 1, tostring(now))
return reply
"""


def _subject_args(subjects: Sequence[Subject]) -> list:
    args: list = [len(subjects)]
    for s in subjects:
        args += [s.prefix, s.tokens_per_minute, s.nano_per_day, s.nano_per_month]
    return args


class RedisCounters:
    """The counters in Redis, shared by every router replica."""

    def __init__(self, client: aioredis.Redis, now: str = ""):
        self._client = client
        # Empty: Redis' clock. Tests pin a time to check window boundaries.
        self._now = now
        self._admit = client.register_script(_ADMIT)
        self._debit = client.register_script(_DEBIT)
        self._record = client.register_script(_RECORD)
        self._read = client.register_script(_READ)

    async def _run(self, script, args: list):
        try:
            return await script(args=[self._now, *args])
        except (RedisError, OSError) as err:
            raise StoreError(f"redis usage counters failed: {type(err).__name__}") from err

    async def admit(self, subjects: Sequence[Subject], tokens: int, nano: int) -> Refusal | None:
        index, window, now = await self._run(self._admit, [tokens, nano, *_subject_args(subjects)])
        if int(index) == 0:
            return None
        return Refusal(int(index) - 1, window.decode() if isinstance(window, bytes) else window, float(now))

    async def debit(self, subjects: Sequence[Subject], tokens: int, nano_per_token: float) -> int:
        return int(await self._run(self._debit, [tokens, repr(float(nano_per_token)), *_subject_args(subjects)]))

    async def record(self, subjects: Sequence[Subject], fields: dict[str, int]) -> None:
        pairs = [item for name, value in fields.items() for item in (name, int(value))]
        await self._run(self._record, [len(fields), *pairs, *_subject_args(subjects)])

    async def read(self, subject: Subject, window: str) -> tuple[dict[str, int], float]:
        reply = await self._run(self._read, [subject.prefix, WINDOWS.index(window) + 1])
        now, flat = float(reply[0]), reply[1:]
        return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}, now

    async def close(self) -> None:
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
