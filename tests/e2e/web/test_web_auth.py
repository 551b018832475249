"""The web view with auth required: login with a development token, the API's cross-institution policy
(break the glass), the break-the-glass access highlighted in the audit trail, and a data steward's undo and
confirm of a link — all in headless Chromium against a real server process."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.web.conftest import Console, Demo, mint_token, shoot

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group("web-view-auth")]


def test_login_break_the_glass_audit_and_links(page: Any, console: Console, web_server_auth: Demo) -> None:
    demo = web_server_auth
    page.on("dialog", lambda dialog: dialog.accept())  # "undo this record's link?"

    # No token: the pages ask for one; a forged one is refused with the API's reason.
    page.goto(f"{demo.base_url}/web/")
    assert "/web/login" in page.url
    shoot(page, "10-login")
    page.get_by_test_id("token").fill("not.a.token")
    page.get_by_test_id("token-submit").click()
    page.wait_for_load_state()
    assert "Token rechazado" in page.inner_text("body")

    token = mint_token(demo.data_dir, "IMSS", "dra.lopez")
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("token-submit").click()
    page.wait_for_load_state()
    assert "dra.lopez · IMSS" in page.inner_text("header")

    # IMSS opens a person whose record holds other institutions' entries: the API refuses without a reason.
    imss = demo.records["IMSS"]
    page.goto(f"{demo.base_url}/web/patients/{imss}")
    assert "403" in page.get_by_test_id("problem").inner_text()
    shoot(page, "11-break-the-glass")
    page.get_by_test_id("break-glass-reason").fill("Urgencia: paciente inconsciente en choque")
    page.get_by_role("button", name="Romper el cristal y abrir").click()
    page.wait_for_load_state()
    assert "paciente inconsciente" in page.get_by_test_id("break-glass-active").inner_text()
    institutions = set(
        page.locator("[data-testid=timeline] li.event").evaluate_all("els => els.map(e => e.dataset.institution)")
    )
    assert len(institutions) >= 2
    shoot(page, "12-record-break-the-glass")

    # The audit trail shows that access, highlighted, with its reason.
    page.goto(f"{demo.base_url}/web/patients/{imss}/audit")
    highlighted = page.locator("[data-testid=audit-trail] tr[data-break-glass=true]")
    assert highlighted.count() >= 1
    assert "dra.lopez" in highlighted.first.inner_text()
    assert "paciente inconsciente" in page.get_by_test_id("break-glass-log").inner_text()
    shoot(page, "13-audit-break-the-glass")

    # IMSS's data steward may not undo the link of another institution's record: the page says who may.
    other_institution, other = next((i, r) for i, r in demo.records.items() if r != imss)
    page.goto(f"{demo.base_url}/web/patients/{imss}")
    rows = page.locator("[data-testid=links] tbody tr")
    assert rows.count() == 3
    rows.filter(has_text=other).get_by_role("button").click()
    page.wait_for_load_state()
    assert f"only {other_institution} may link or unlink it" in page.inner_text("main")

    # That institution's steward undoes it, then confirms it again (the API's $unlink and $link), breaking the
    # glass on the person whose other records it may not read.
    page.goto(f"{demo.base_url}/web/login")
    page.get_by_test_id("token").fill(mint_token(demo.data_dir, other_institution, "gestor.datos", "steward"))
    page.get_by_test_id("token-submit").click()
    page.wait_for_load_state()
    page.goto(f"{demo.base_url}/web/patients/{imss}")
    if page.get_by_test_id("problem").count():
        page.get_by_test_id("break-glass-reason").fill("Depuración del índice maestro: registro duplicado")
        page.get_by_role("button", name="Romper el cristal y abrir").click()
        page.wait_for_load_state()
    rows = page.locator("[data-testid=links] tbody tr")
    assert rows.count() == 3
    rows.filter(has_text=other).get_by_role("button").click()
    page.wait_for_load_state()
    assert "Vínculo deshecho" in page.inner_text("main")
    assert page.locator("[data-testid=links] tbody tr").count() == 2
    page.locator("[data-testid=links] input[name=record]:not([type=hidden])").fill(other)
    page.get_by_role("button", name="Vincular", exact=True).click()
    page.wait_for_load_state()
    assert "Vínculo confirmado" in page.inner_text("main")
    links = page.locator("[data-testid=links] tbody tr")
    assert links.count() == 3
    assert "manual" in links.filter(has_text=other).inner_text()
    page.locator("[data-testid=links]").scroll_into_view_if_needed()
    shoot(page, "14-links")
    assert console.errors == []
