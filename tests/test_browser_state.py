"""The dashboard's NF state tab in a real browser: JupyterLab in Debian's chromium (the
fixtures of test_browser.py), the NAT's live tables while HTTP runs through it.  Its
screenshot, ``artifacts/browser/nf-state-tab.png``, goes with the others."""

from __future__ import annotations

import pytest

from .test_browser import ARTIFACTS, STOP_FILE, Server, _run_cell, browser, jupyter  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.uml]


def test_nf_state_tab_shows_the_nats_connections(jupyter: Server, browser) -> None:  # noqa: F811
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{jupyter.url}/lab/tree/dashboard.ipynb?token={jupyter.token}")
        page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                               timeout=60_000)
        page.wait_for_timeout(1500)
        _run_cell(page, 0)  # boots the chain, shows the dashboard
        page.locator(".stdpkt-plots canvas").first.wait_for(timeout=120_000)
        page.locator(".lm-TabBar-tab", has_text="NF state").click()
        _run_cell(page, 1)  # HTTP and pings through nat until STOP_FILE exists
        page.wait_for_function(
            "() => { const v = document.querySelector('.stdpkt-state-connections');"
            " return v && /TIME_WAIT|ESTABLISHED/.test(v.textContent) && /icmp/.test(v.textContent); }",
            timeout=60_000)
        view = page.locator(".stdpkt-state-view")
        view.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        view.screenshot(path=str(ARTIFACTS / "nf-state-tab.png"))
        page.screenshot(path=str(ARTIFACTS / "nf-state-page.png"), full_page=True)
        text = view.inner_text()
        assert "nat" in text and "connections" in text and "routes" in text
        assert "addresses" in text and "neighbours" in text and "eth1" in text
        assert "→" in text  # original/reply tuples, not wrapped conntrack text
        assert jupyter.root is not None
        (jupyter.root / STOP_FILE).write_text("seen\n")  # the traffic cell may end now
        page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputPrompt')]"
                               ".some(p => p.textContent.includes('*'))", timeout=60_000)
        _run_cell(page, 2)
        page.wait_for_function("() => document.body.innerText.includes('stopped stopped')", timeout=60_000)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "nf-state-failure.png"), full_page=True)
        raise
