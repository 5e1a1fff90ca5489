"""Daily, per-member, per-key and AppSumo message limits: atomic reserve and settle on the request path.

Fast path: one Lua script per reservation checks and holds every scope that applies at once
(`counters`, scripts in `lua/`). Without Redis (or while it is unreachable, `breaker`) the same checks
run in the database under a per-workspace lock, against the ledger and a table of reservations
(`database`). `periods` has the billing day and month, `scopes` which limits apply and what a refusal
says; `reserve` is the face the request path uses.
"""

from billing.quotas.breaker import reset_quota_state
from billing.quotas.counters import CounterSettle, rebuild_counter_sync, settle_counters, settle_counters_sync
from billing.quotas.database import (
    ledger_lines_for,
    lock_in_transaction,
    release_database_reservations,
    reserve_in_database,
)
from billing.quotas.periods import billing_day, billing_timezone, day_start, format_duration, month_bounds
from billing.quotas.reserve import (
    BACKEND_DATABASE,
    BACKEND_NONE,
    BACKEND_REDIS,
    Reservation,
    current_budget,
    release_reservation,
    reserve_message,
)
from billing.quotas.scopes import (
    APPSUMO_DAILY_LIMIT,
    APPSUMO_MONTHLY_LIMIT,
    DAILY_LIMIT,
    KEY_DAILY_LIMIT,
    MEMBER_DAILY_LIMIT,
    Budget,
    Counter,
    KeyBudget,
    QuotaExceeded,
    Scope,
    counters_for,
    key_counter_for,
    scopes_for,
)

__all__ = [
    "APPSUMO_DAILY_LIMIT",
    "APPSUMO_MONTHLY_LIMIT",
    "BACKEND_DATABASE",
    "BACKEND_NONE",
    "BACKEND_REDIS",
    "DAILY_LIMIT",
    "KEY_DAILY_LIMIT",
    "MEMBER_DAILY_LIMIT",
    "Budget",
    "Counter",
    "CounterSettle",
    "KeyBudget",
    "QuotaExceeded",
    "Reservation",
    "Scope",
    "billing_day",
    "billing_timezone",
    "counters_for",
    "current_budget",
    "day_start",
    "format_duration",
    "key_counter_for",
    "ledger_lines_for",
    "lock_in_transaction",
    "month_bounds",
    "rebuild_counter_sync",
    "release_database_reservations",
    "release_reservation",
    "reserve_in_database",
    "reserve_message",
    "reset_quota_state",
    "scopes_for",
    "settle_counters",
    "settle_counters_sync",
]
