"""How a federation is configured (``EHR_STORES``, ``EHR_STORE``) and what each store is given."""

from __future__ import annotations

import pytest

from ehr_core.settings import Settings

STORES = "IMSS=postgresql://a/ehr, ISSSTE=postgresql://b:5433/ehr\nIMSS-Bienestar=postgresql://c/ehr"


def test_stores_are_read_in_order_from_commas_or_newlines() -> None:
    settings = Settings(stores=STORES, database_url="postgresql://national/ehr")
    assert settings.federated
    assert settings.store_urls() == {
        "IMSS": "postgresql://a/ehr",
        "ISSSTE": "postgresql://b:5433/ehr",
        "IMSS-Bienestar": "postgresql://c/ehr",
    }
    assert settings.own_store() == "IMSS"  # the first, when EHR_STORE is unset
    assert Settings(stores=STORES, store="ISSSTE").own_store() == "ISSSTE"


def test_each_store_gets_its_own_database_and_the_short_connection_timeout() -> None:
    settings = Settings(stores=STORES, database_url="postgresql://national/ehr", store_connect_timeout_seconds=2)
    store = settings.for_store("ISSSTE")
    assert store.database_url == "postgresql://b:5433/ehr"
    assert not store.federated
    assert "port=5433" in store.postgres_conninfo() and "connect_timeout=2" in store.postgres_conninfo()
    assert store.event_store_env()["POSTGRES_CONNECT_TIMEOUT"] == "2"
    assert settings.event_store_env()["POSTGRES_CONNECT_TIMEOUT"] == "30"  # the national database


def test_a_store_without_a_postgresql_url_or_an_unknown_own_store_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"IMSS.*needs a postgresql:// URL"):
        Settings(stores="IMSS=/var/lib/imss").store_urls()
    with pytest.raises(ValueError, match="EHR_STORE='SEDENA' is not one of EHR_STORES"):
        Settings(stores=STORES, store="SEDENA").own_store()


def test_no_stores_is_the_single_store_deployment() -> None:
    assert not Settings(database_url="postgresql://x/ehr").federated
