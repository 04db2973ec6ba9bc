"""Settings of the server that tests/bench/bench_load.py starts: the platform's, plus a bare
Django "hello" view (load_urls) to compare the platform's pages with."""

from pmpd_web.settings import *  # noqa: F403

ROOT_URLCONF = "load_urls"
