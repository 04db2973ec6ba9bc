"""Logging in to a running platform the way a browser does, for clients such as dicomweb-client."""

from __future__ import annotations

import requests


def logged_in_session(base_url: str, username: str, password: str) -> requests.Session:
    """A requests session logged in through /accounts/login/ with the form's CSRF token."""
    session = requests.Session()
    login_url = f"{base_url}/accounts/login/"
    session.get(login_url, timeout=30).raise_for_status()
    response = session.post(
        login_url,
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": login_url},
        allow_redirects=False,
        timeout=30,
    )
    if response.status_code != 302 or "sessionid" not in session.cookies:
        raise AssertionError(f"login as {username} failed: HTTP {response.status_code}")
    return session
