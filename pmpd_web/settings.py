"""Settings for the PMPD platform, read from the environment.

Embedded defaults need no server: SQLite under var/ and a file-system Celery broker served by a
real worker process. ``DATABASE_URL`` switches to PostgreSQL (psycopg 3), ``CELERY_BROKER_URL``
to Redis. ``PMPD_PROFILE=production`` turns on the hardened profile (DEBUG off, a secret key
required, secure cookies, HSTS) that passes ``manage.py check --deploy`` without warnings.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from pmpd_web.shared_storage import s3_storage

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


PROFILE = os.environ.get("PMPD_PROFILE", "development")
if PROFILE not in {"development", "production"}:
    raise ImproperlyConfigured("PMPD_PROFILE must be 'development' or 'production'")
PRODUCTION = PROFILE == "production"

DATA_DIR = Path(os.environ.get("PMPD_DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in the production profile")
    SECRET_KEY = "insecure-development-key-only-for-the-embedded-demo-and-tests"

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "pmpd_web.accounts",
    "pmpd_web.jobs",
    "pmpd_web.cohorts",
    "pmpd_web.imaging",
    "inference",
    "analytics",
    "pmpd_web.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before WhiteNoise, so that static files carry the headers too.
    "pmpd_web.accounts.security_headers.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "pmpd_web.accounts.middleware.SessionTimeoutMiddleware",
    "pmpd_web.accounts.middleware.RefuseNulBytesMiddleware",
    "pmpd_web.jobs.middleware.JobQueueUnavailableMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "pmpd_web.urls"
WSGI_APPLICATION = "pmpd_web.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "pmpd_web" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            "builtins": ["pmpd_web.cohorts.templatetags.pmpd"],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'pmpd.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded database is shared by the web process and the local worker.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out account or address before a password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "cohort-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TZ", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", DATA_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "pmpd_web" / "static"]
# WhiteNoise serves static files with DEBUG off too (the demo runs so, with the platform's own
# error pages); outside production it reads them from the apps' folders, no collectstatic needed.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", not PRODUCTION)
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", DATA_DIR / "media"))
# The OHIF viewer as the frontend build writes it (a build output, not in git), served under
# /ohif/ behind the login by pmpd_web.imaging.viewer; kept out of collectstatic (about 70 MB).
PMPD_OHIF_ROOT = Path(os.environ.get("PMPD_OHIF_ROOT", BASE_DIR / "pmpd_web" / "ohif"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Several hosts share one S3-compatible bucket instead of a media volume (README, "Shared
# storage for several hosts").
STORAGES["default"] = (
    s3_storage(
        bucket=os.environ.get("PMPD_S3_BUCKET", ""),
        endpoint_url=os.environ.get("PMPD_S3_ENDPOINT_URL", ""),
        region=os.environ.get("PMPD_S3_REGION", ""),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        addressing_style=os.environ.get("PMPD_S3_ADDRESSING_STYLE", ""),
    )
    or STORAGES["default"]
)

# Keys the hash that remaps DICOM UIDs on de-identification: a stable site secret.
PMPD_DEID_SECRET = os.environ.get("PMPD_DEID_SECRET", "")
if not PMPD_DEID_SECRET:
    if PRODUCTION:
        raise ImproperlyConfigured("PMPD_DEID_SECRET must be set in the production profile")
    PMPD_DEID_SECRET = "development-deidentification-secret"

# Uploads: clinical tables are small; the limit is the import's own, enforced with a message.
PMPD_TABLE_MAX_BYTES = int(os.environ.get("PMPD_TABLE_MAX_BYTES", str(20 * 1024 * 1024)))
# Rows below the header a clinical table may have (blank ones count), and the file size above
# which its preview runs as a job on the cpu queue instead of in the web request.
PMPD_TABLE_MAX_ROWS = int(os.environ.get("PMPD_TABLE_MAX_ROWS", "50000"))
PMPD_TABLE_PREVIEW_JOB_BYTES = int(os.environ.get("PMPD_TABLE_PREVIEW_JOB_BYTES", str(1024**2)))
DATA_UPLOAD_MAX_MEMORY_SIZE = PMPD_TABLE_MAX_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Image uploads and ingest (pmpd_web/imaging; README "Images"). Sizes in bytes.
_GIB = 1024**3
PMPD_UPLOAD_MAX_FILE_BYTES = int(os.environ.get("PMPD_UPLOAD_MAX_FILE_BYTES", str(10 * _GIB)))
PMPD_UPLOAD_MAX_BYTES = int(os.environ.get("PMPD_UPLOAD_MAX_BYTES", str(50 * _GIB)))
PMPD_UPLOAD_MAX_FILES = int(os.environ.get("PMPD_UPLOAD_MAX_FILES", "20000"))
PMPD_UPLOAD_CHUNK_MAX_BYTES = int(os.environ.get("PMPD_UPLOAD_CHUNK_MAX_BYTES", str(32 * 1024**2)))
# ZIP archives: refused beyond these (zip bombs), whatever their headers claim.
PMPD_ARCHIVE_MAX_FILES = int(os.environ.get("PMPD_ARCHIVE_MAX_FILES", "20000"))
PMPD_ARCHIVE_MAX_BYTES = int(os.environ.get("PMPD_ARCHIVE_MAX_BYTES", str(50 * _GIB)))
PMPD_ARCHIVE_MAX_RATIO = float(os.environ.get("PMPD_ARCHIVE_MAX_RATIO", "200"))
# Validation of the CT and of the mask's grid.
PMPD_INGEST_MIN_SLICES = int(os.environ.get("PMPD_INGEST_MIN_SLICES", "8"))
PMPD_GRID_TOLERANCE_MM = float(os.environ.get("PMPD_GRID_TOLERANCE_MM", "0.01"))
PMPD_DIRECTION_TOLERANCE = float(os.environ.get("PMPD_DIRECTION_TOLERANCE", "0.0001"))
# De-identification dates: "shift" (every date moved back by a per-patient keyed offset of
# 1..PMPD_DEID_DATE_SHIFT_MAX_DAYS days; intervals kept) or "year" (dates become 1 January).
PMPD_DEID_DATES = os.environ.get("PMPD_DEID_DATES", "shift")
if PMPD_DEID_DATES not in {"shift", "year"}:
    raise ImproperlyConfigured("PMPD_DEID_DATES must be 'shift' or 'year'")
PMPD_DEID_DATE_SHIFT_MAX_DAYS = int(os.environ.get("PMPD_DEID_DATE_SHIFT_MAX_DAYS", "3650"))
# gzip level of the canonical CT volumes (1 fastest .. 9 smallest; 0, the default, writes a
# plain .nii: compressing a 512x512x300 CT takes seconds of the ingest, to save part of a
# volume stored beside its uncompressed DICOM instances anyway). Masks are always gzipped.
PMPD_CANONICAL_GZIP_LEVEL = int(os.environ.get("PMPD_CANONICAL_GZIP_LEVEL", "0"))
# Scratch space of the ingest worker (uploads are unpacked here, never under their own names).
PMPD_INGEST_WORK_DIR = os.environ.get("PMPD_INGEST_WORK_DIR", "") or None

# Reverse proxies in front of the platform that append to X-Forwarded-For (docker-compose has
# one): rate limits and the login lockout count the address the outermost of them saw. 0 when
# gunicorn faces the clients (X-Forwarded-For is then ignored: a client could forge it).
PMPD_TRUSTED_PROXIES = int(os.environ.get("PMPD_TRUSTED_PROXIES", "0"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "pmpd_web.accounts.tokens.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "pmpd_web.api_schema.PMPDAutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "pmpd_web.accounts.parsers.DepthLimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "pmpd_web.accounts.throttles.PerUserRateThrottle",
    ],
    # Requests per user (session or token), and wrong tokens per client address (every API
    # request needs a login, so that is what an anonymous client can do); a client over a rate
    # gets 429 with Retry-After.
    "DEFAULT_THROTTLE_RATES": {
        "user": os.environ.get("PMPD_API_USER_RATE", "3000/minute"),
        "token_failure": os.environ.get("PMPD_API_TOKEN_FAILURE_RATE", "10/minute"),
    },
    "NUM_PROXIES": PMPD_TRUSTED_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PMPD platform API",
    "DESCRIPTION": "Cohorts, patients, clinical-table imports and jobs. Research use only.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its documentation pages are for logged-in users (session or token).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery. The embedded default is a file-system broker: no server, and a real worker process
# (`celery -A pmpd_web worker`) consumes it. Deployments set CELERY_BROKER_URL to Redis.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = DATA_DIR / "celery-broker"
    # kombu's file-system transport lists these folders and fails when they are missing (a
    # fresh clone's worker stopped with FileNotFoundError before the first task was sent).
    # Its control folder (broadcast exchanges such as celery.pidbox) defaults to "control" in the
    # working directory; keep it under the data folder with the rest.
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # A worker with nothing queued lists the folder again after this many seconds (kombu's
        # default is 1 s: each step of a chain, e.g. a part's preprocessing then its scoring,
        # could wait up to a second for an idle worker to look).
        "polling_interval": float(os.environ.get("PMPD_FILESYSTEM_BROKER_POLL_SECONDS", "0.1")),
    }
else:
    # Redis hands a task that a worker took but never acknowledged (the worker was killed) to
    # another worker after this many seconds. It must exceed the longest task (a training run),
    # or a task still running is delivered twice; shorter means a lost worker's job resumes
    # sooner.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", str(6 * 3600)))
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_MAX_RETRIES = int(os.environ.get("CELERY_TASK_MAX_RETRIES", "3"))
# Job reliability (pmpd_web.jobs): retry backoff, the sweeper that publishes jobs the queue
# lost or never received, the heartbeat that tells a dead worker from a slow one, and the
# folder of the jobs' scratch files.
PMPD_JOB_RETRY_BACKOFF_SECONDS = int(os.environ.get("PMPD_JOB_RETRY_BACKOFF_SECONDS", "2"))
PMPD_JOB_RETRY_BACKOFF_MAX_SECONDS = int(
    os.environ.get("PMPD_JOB_RETRY_BACKOFF_MAX_SECONDS", "300")
)
PMPD_JOB_SWEEP_SECONDS = int(os.environ.get("PMPD_JOB_SWEEP_SECONDS", "300"))
PMPD_JOB_REPUBLISH_AFTER_SECONDS = int(os.environ.get("PMPD_JOB_REPUBLISH_AFTER_SECONDS", "900"))
PMPD_JOB_HEARTBEAT_SECONDS = float(os.environ.get("PMPD_JOB_HEARTBEAT_SECONDS", "30"))
PMPD_JOB_HEARTBEAT_STALE_SECONDS = int(os.environ.get("PMPD_JOB_HEARTBEAT_STALE_SECONDS", "120"))
# A job (or a part of one) whose worker died this many times fails with the reason instead of
# being handed to the next worker (work that kills every worker, e.g. out of memory on one scan).
PMPD_JOB_MAX_WORKERS_LOST = int(os.environ.get("PMPD_JOB_MAX_WORKERS_LOST", "3"))
PMPD_JOB_SCRATCH_DIR = Path(os.environ.get("PMPD_JOB_SCRATCH_DIR", DATA_DIR / "job-scratch"))
# A cohort's scoring is split into parts of this many patients, shared by the workers.
PMPD_SCORING_PATIENTS_PER_PART = int(os.environ.get("PMPD_SCORING_PATIENTS_PER_PART", "4"))
# A cohort's nnU-Net mask prediction, likewise (one case at a time: one patient a part).
PMPD_SEGMENTATION_PATIENTS_PER_PART = int(
    os.environ.get("PMPD_SEGMENTATION_PATIENTS_PER_PART", "1")
)

# Security. The production profile is what `check --deploy` vets.
# Pages may not be framed; the embedded viewer's own responses opt in to SAMEORIGIN.
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)

# The default cache holds the API's rate counters (and DICOMweb's short-lived permission
# cache): set PMPD_CACHE_URL (redis://...) where several web processes serve, so that they
# count together; the default is per process.
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
        if (_cache_url := os.environ.get("PMPD_CACHE_URL", ""))
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Sessions end PMPD_SESSION_MAX_AGE_SECONDS after the login whatever happens (the absolute
# timeout), and sooner after PMPD_SESSION_IDLE_SECONDS without a request (the idle timeout);
# pmpd_web.accounts.middleware enforces both.
SESSION_COOKIE_AGE = int(os.environ.get("PMPD_SESSION_MAX_AGE_SECONDS", str(8 * 3600)))
PMPD_SESSION_IDLE_SECONDS = int(os.environ.get("PMPD_SESSION_IDLE_SECONDS", str(30 * 60)))

# Login lockout (django-axes): after PMPD_LOGIN_FAILURE_LIMIT failed logins for one username,
# or PMPD_LOGIN_ADDRESS_FAILURE_LIMIT from one address (any usernames), further logins there
# are refused for PMPD_LOGIN_LOCKOUT_MINUTES after the last failure. Site admins unlock early
# (admin: Users -> "Unlock logins").
AXES_FAILURE_LIMIT = int(os.environ.get("PMPD_LOGIN_FAILURE_LIMIT", "5"))
PMPD_LOGIN_ADDRESS_FAILURE_LIMIT = int(os.environ.get("PMPD_LOGIN_ADDRESS_FAILURE_LIMIT", "20"))
AXES_HANDLER = "pmpd_web.accounts.lockout.AccountAndAddressHandler"
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("PMPD_LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# A successful login clears that username's failures only (accounts.signals): axes' own reset
# also clears every failure from the same address, which let someone with an account of their
# own interleave logins to guess another account's password without ever being locked.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "pmpd_web.accounts.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "pmpd_web.accounts.lockout.client_address"
AXES_VERBOSE = False
# Successful logins are in the platform's audit trail already.
AXES_DISABLE_ACCESS_LOG = True

# API tokens (pmpd_web.accounts.tokens): stored as SHA-256 digests, valid this many days at
# most (the owner picks fewer on the "API tokens" page), revoked when the password changes.
PMPD_API_TOKEN_MAX_DAYS = int(os.environ.get("PMPD_API_TOKEN_MAX_DAYS", "90"))

# Nesting deeper than this in a JSON body is refused with 400 (a deep body exhausts the stack).
PMPD_JSON_MAX_DEPTH = int(os.environ.get("PMPD_JSON_MAX_DEPTH", "64"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # highdicom narrates every SEG it builds at INFO.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "highdicom": {"level": "WARNING"}},
}
