"""The trace page of a running request shows the step's text as the model writes it
(token deltas over the WebSocket, with Redis), then the stored step in its place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import WebServer

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)",
                allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.e2e.test_browser import CHROMIUM_ARGS, PASSWORD  # noqa: E402

REDIS_URL = os.environ.get("MASH_E2E_TOKENS_REDIS_URL", "redis://127.0.0.1:6379/12")
TEXT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"


@pytest.fixture
def cluster_env(cluster_env):
    return {**cluster_env, "MASH_REDIS_URL": REDIS_URL}


def test_the_trace_page_shows_tokens_live_then_the_stored_step(clusters, tmp_path):
    from django.contrib.auth.models import User

    User.objects.create_user("operator", password=PASSWORD, is_staff=True, is_superuser=True)
    clusters.start()
    site = WebServer(clusters.env, tmp_path / "daphne.log").start()
    try:
        plan = {"script": [{"tool_calls": [{"name": "bash", "arguments": {"command": "sleep 4"}}]},
                           {"text": TEXT, "pace": 0.4}]}
        rid = httpx.post(f"{site.url}/api/v1/agent/primary/request", json={"message": json.dumps(plan)},
                         timeout=30).json()["data"]["request_id"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(30_000)
                page.goto(f"{site.url}/telemetry/login/")
                page.fill("#id_username", "operator")
                page.fill("#id_password", PASSWORD)
                page.click("button[type=submit]")
                page.goto(f"{site.url}/telemetry/requests/{rid}/")
                page.locator("#live-state.on").wait_for()
                tokens = page.locator("#live-tokens")
                tokens.wait_for(state="visible")  # the model is writing: its first words, live
                partial = tokens.inner_text()
                assert partial and TEXT.startswith(partial.strip()) and partial.strip() != TEXT
                page.locator("#trace-status .status-completed").wait_for()
                tokens.wait_for(state="hidden")  # the stored step took its place
                assert TEXT in page.locator("#trace-body").inner_text()
            finally:
                browser.close()
    finally:
        site.stop()
