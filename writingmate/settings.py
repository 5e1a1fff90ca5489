"""The one settings module: everything comes from the environment, with safe development defaults."""

import re
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from writingmate.redis_connection import celery_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)

_DEV_SECRET_KEY = "dev-only-insecure-secret-key-never-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _DEV_SECRET_KEY
if not DEBUG and SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must not be the development key when DEBUG is off.")

# Keyed hash for developer keys and the key that encrypts BYOK secrets. Each defaults to a value
# derived from SECRET_KEY so a development checkout works; production sets its own.
API_KEY_HMAC_SECRET = env.str("API_KEY_HMAC_SECRET", default="") or f"apikey-hmac:{SECRET_KEY}"
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="") or f"field-encryption:{SECRET_KEY}"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "accounts",
    "apikeys",
    "billing",
    "gateway",
]

# The site's middleware. /v1 runs none of it: gateway.asgi serves the API with its own lean handler.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.login_throttling.LoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "writingmate.urls"
WSGI_APPLICATION = "writingmate.wsgi.application"
ASGI_APPLICATION = "writingmate.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout let the API's writer thread and the site's requests share the file. IMMEDIATE:
    # a transaction that reads then writes (an admin save) takes the write lock first and waits its turn,
    # instead of failing at once with "database is locked" when the ledger writer committed in between.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
# PostgreSQL: a psycopg connection pool per process, at most DATABASE_POOL_MAX_SIZE connections, shared by
# the site's requests and the API's database threads (docs/deploy.md has the arithmetic for N processes).
# Persistent per-thread connections (CONN_MAX_AGE > 0) do not fit ASGI: they grow with the threads.
DATABASE_POOL_MIN_SIZE = env.int("DATABASE_POOL_MIN_SIZE", default=2)
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=10)
# How long a thread waits for a free pooled connection before the request fails.
DATABASE_POOL_TIMEOUT_SECONDS = env.float("DATABASE_POOL_TIMEOUT_SECONDS", default=10.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's backend, whose pool sweeps every idle connection when it finds one broken (writingmate/postgresql).
    DATABASES["default"]["ENGINE"] = "writingmate.postgresql"
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(DATABASE_POOL_MIN_SIZE, DATABASE_POOL_MAX_SIZE),
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
    }
else:
    # SQLite (development): no server to run out of connections; each thread keeps its own a while.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # with the pool: a connection is checked as it is taken
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_USER_MODEL = "accounts.User"
# Sign-in brute-force throttling (accounts.login_throttling), counted in the cache.
AUTHENTICATION_BACKENDS = ["accounts.login_throttling.ThrottledModelBackend"]
LOGIN_THROTTLE_WINDOW_SECONDS = env.int("LOGIN_THROTTLE_WINDOW_SECONDS", default=15 * 60)
LOGIN_THROTTLE_FAILURES_PER_ACCOUNT = env.int("LOGIN_THROTTLE_FAILURES_PER_ACCOUNT", default=5)
LOGIN_THROTTLE_FAILURES_PER_ADDRESS = env.int("LOGIN_THROTTLE_FAILURES_PER_ADDRESS", default=30)
LOGIN_THROTTLE_PATHS = env.list("LOGIN_THROTTLE_PATHS", default=["/login/", "/admin/login/"])
# Email: password resets and email-change confirmations. EMAIL_URL as django-environ reads it:
# consolemail:// (the default: mails are printed to stdout), smtp+tls://USER:PASSWORD@HOST:587 or
# smtps://USER:PASSWORD@HOST:465 (URL-encode special characters in the password).
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT_SECONDS", default=10.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Writingmate <no-reply@localhost>")
# How long a password-reset or email-change link works.
PASSWORD_RESET_TIMEOUT = env.int("ACCOUNT_LINK_MAX_AGE_SECONDS", default=2 * 24 * 3600)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "settings"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "templates" / "static"]
# In development WhiteNoise serves straight from the source folders; production runs collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# What runs on every /v1 view (gateway.core.api_view.AsyncApiView runs this pipeline asynchronously).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apikeys.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["apikeys.throttling.InvalidKeyThrottle"],
    "DEFAULT_PARSER_CLASSES": ["gateway.parsers.JsonObjectParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "gateway.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# Security headers: on whenever DEBUG is off.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- Upstreams -------------------------------------------------------------------------------
OPENROUTER_BASE_URL = env.str("OPENROUTER_BASE_URL", default="https://openrouter.ai/api/v1").rstrip("/")
OPENROUTER_API_KEY = env.str("OPENROUTER_API_KEY", default="")
TRANSCRIPTION_BASE_URL = env.str("TRANSCRIPTION_BASE_URL", default="https://api.openai.com/v1").rstrip("/")
TRANSCRIPTION_API_KEY = env.str("TRANSCRIPTION_API_KEY", default="")
# The demo provider serves demo/... models offline; it is on only while no upstream key is set.
DEMO_PROVIDER_ENABLED = env.bool("DEMO_PROVIDER_ENABLED", default=not OPENROUTER_API_KEY)
if not DEBUG and DEMO_PROVIDER_ENABLED:
    raise ImproperlyConfigured(
        "The demo provider must not run in production (DEBUG off): set OPENROUTER_API_KEY, "
        "or DEMO_PROVIDER_ENABLED=0 if every model is served otherwise."
    )
DEMO_STREAM_DELAY_SECONDS = env.float("DEMO_STREAM_DELAY_SECONDS", default=0.02)

UPSTREAM_CONNECT_TIMEOUT_SECONDS = env.float("UPSTREAM_CONNECT_TIMEOUT_SECONDS", default=5.0)
UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS = env.float("UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS", default=120.0)
UPSTREAM_CHUNK_TIMEOUT_SECONDS = env.float("UPSTREAM_CHUNK_TIMEOUT_SECONDS", default=60.0)
UPSTREAM_RETRY_BACKOFF_SECONDS = env.float("UPSTREAM_RETRY_BACKOFF_SECONDS", default=0.25)
UPSTREAM_MAX_CONNECTIONS = env.int("UPSTREAM_MAX_CONNECTIONS", default=1000)
# A PEM file of CA certificates that replaces the system CAs for upstream TLS (a private CA); empty: system CAs.
UPSTREAM_CA_FILE = env.str("UPSTREAM_CA_FILE", default="")
# While an upstream is silent (a reasoning model thinking), streams send an SSE comment this often so
# proxies and clients with idle timeouts keep them open. 0 turns the comments off.
STREAM_HEARTBEAT_SECONDS = env.float("STREAM_HEARTBEAT_SECONDS", default=15.0)

# --- API limits ---------------------------------------------------------------------------------
API_MAX_JSON_BODY_BYTES = env.int("API_MAX_JSON_BODY_BYTES", default=4 * 1024 * 1024)
API_MAX_AUDIO_BYTES = env.int("API_MAX_AUDIO_BYTES", default=25 * 1024 * 1024)
# Anthropic's Messages API: Claude Code sends whole sessions, screenshots and PDFs inline (Anthropic's own
# cap is 32 MB; this stays under the deploy guide's nginx client_max_body_size).
API_MAX_MESSAGES_BODY_BYTES = env.int("API_MAX_MESSAGES_BODY_BYTES", default=24 * 1024 * 1024)
API_MAX_HEADER_BYTES = env.int("API_MAX_HEADER_BYTES", default=32 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_AUDIO_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
API_KEY_CACHE_SECONDS = env.int("API_KEY_CACHE_SECONDS", default=60)
# An address that presents more invalid keys than this in a minute gets 429s until the minute ends.
API_INVALID_KEY_LIMIT_PER_MINUTE = env.int("API_INVALID_KEY_LIMIT_PER_MINUTE", default=30)

# --- Billing ------------------------------------------------------------------------------------
BILLING_TOKENS_PER_MESSAGE = env.int("BILLING_TOKENS_PER_MESSAGE", default=16000)
BILLING_CACHED_TOKEN_DISCOUNT = env.str("BILLING_CACHED_TOKEN_DISCOUNT", default="0.5")
BILLING_DAY_TIMEZONE = env.str("BILLING_DAY_TIMEZONE", default="UTC")
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=24 * 3600)
# How long a concurrent duplicate waits for the first request with its Idempotency-Key before a 409.
IDEMPOTENCY_WAIT_SECONDS = env.float("IDEMPOTENCY_WAIT_SECONDS", default=5.0)
# An in-flight reservation expires after this (a crashed process cannot hold messages for ever).
BILLING_RESERVATION_TTL_SECONDS = env.int("BILLING_RESERVATION_TTL_SECONDS", default=900)
# Each Redis quota counter is merged with the ledger this often, healing settles Redis missed.
BILLING_QUOTA_RECONCILE_SECONDS = env.int("BILLING_QUOTA_RECONCILE_SECONDS", default=60)
# After a Redis error, limits are enforced in the database for this long before Redis is tried again.
BILLING_REDIS_RETRY_SECONDS = env.float("BILLING_REDIS_RETRY_SECONDS", default=5.0)
# A finished request's ledger line waits this long for others to share its INSERT and settle.
BILLING_LEDGER_LINGER_SECONDS = env.float("BILLING_LEDGER_LINGER_SECONDS", default=0.02)
# How long a usage event is retried while the database is unreachable before it is spooled to Redis.
BILLING_LEDGER_RETRY_SECONDS = env.float("BILLING_LEDGER_RETRY_SECONDS", default=120.0)
# Refused /v1 requests are counted in memory and written (one upsert) this often (billing.refusals).
REFUSAL_FLUSH_SECONDS = env.float("REFUSAL_FLUSH_SECONDS", default=2.0)

# --- Celery -------------------------------------------------------------------------------------
# The same Redis as everything else (rediss:// included: writingmate.redis_connection.celery_redis_url).
CELERY_BROKER_URL = celery_redis_url(REDIS_URL) if REDIS_URL else "memory://"
CELERY_RESULT_BACKEND = None  # no task's result is read; a Redis URL here works the same way as the broker's
CELERY_BROKER_USE_SSL = None  # kombu reads the TLS options from the rediss:// URL's query
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
# Without a broker there is no beat: each serving process then rolls up the days and workspaces its
# ledger writes touched, at most once per this many seconds (0: only the beat task rolls up).
BILLING_ROLLUP_AFTER_WRITES_SECONDS = env.float(
    "BILLING_ROLLUP_AFTER_WRITES_SECONDS", default=20.0 if CELERY_TASK_ALWAYS_EAGER else 0.0
)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_TIME_LIMIT = 300
CELERY_BEAT_SCHEDULE = {
    "rollup-daily-message-counts": {"task": "billing.tasks.rollup_daily_message_counts_task", "schedule": 60.0},
    "settle-abandoned-streams": {"task": "gateway.tasks.settle_pending_generations_task", "schedule": 120.0},
    "purge-idempotent-requests": {"task": "billing.tasks.purge_idempotent_requests_task", "schedule": 3600.0},
    "sync-models": {"task": "gateway.tasks.sync_models_task", "schedule": 6 * 3600.0},
}

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# json: one object per line (writingmate.logs.JsonFormatter); text: for a developer's terminal.
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'json' or 'text', not {LOG_FORMAT!r}.")
# The only switch that lets a prompt reach the logs (through writingmate.logs.loggable_prompt).
LOG_PROMPTS = env.bool("LOG_PROMPTS", default=False)
_LOG_HANDLER = {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "writingmate.logs.RequestIdFilter"},
        "redact": {"()": "writingmate.logs.RedactSecretsFilter"},
    },
    "formatters": {
        # Both mask keys in the finished line (writingmate.logs.redact_secrets).
        "json": {"()": "writingmate.logs.JsonFormatter"},
        "text": {
            "class": "writingmate.logs.TextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id", "redact"]}
    },
    # uvicorn sets up its own loggers before Django starts; taking them over keeps one format and redaction.
    # Its access log is silenced (no handler) in favour of writingmate.logs.log_access, written after the response.
    "loggers": {
        **{name: _LOG_HANDLER for name in ("uvicorn", "uvicorn.error", "celery")},
        "uvicorn.access": {"handlers": [], "level": LOG_LEVEL, "propagate": False},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# --- Operations ---------------------------------------------------------------------------------
READINESS_TIMEOUT_SECONDS = env.float("READINESS_TIMEOUT_SECONDS", default=1.0)
# Prometheus exposition (gateway.metrics): 404 unless METRICS_TOKEN is set, then bearer auth.
METRICS_PATH = env.str("METRICS_PATH", default="/metrics")
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if not METRICS_PATH.startswith("/") or METRICS_PATH.startswith(("/v1", "/api/openai/v1")):
    raise ImproperlyConfigured("METRICS_PATH must start with / and lie outside the /v1 API.")
# Probes and scrapes come over plain HTTP from inside the network; an HTTPS redirect would fail them.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", "^" + re.escape(METRICS_PATH.lstrip("/")) + "$"]

# --- Stored responses (/v1/responses with store: true) ----------------------------------------------
# Kept this many days, then purged by gateway.tasks.purge_stored_responses_task (OpenAI keeps 30).
RESPONSES_RETENTION_DAYS = env.int("RESPONSES_RETENTION_DAYS", default=30)
# The most input (a previous response's context included) one stored response may hold, in bytes of JSON.
RESPONSES_STORE_MAX_BYTES = env.int("RESPONSES_STORE_MAX_BYTES", default=8 * 1024 * 1024)
CELERY_BEAT_SCHEDULE["purge-stored-responses"] = {
    "task": "gateway.tasks.purge_stored_responses_task",
    "schedule": 3600.0,
}
