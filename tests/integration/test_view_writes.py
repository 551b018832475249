"""The views' write helpers (projections/db.py) keep the same rows on both backends, however they batch."""

from __future__ import annotations

from fhir_api.services import Services

_OWNER = ("resource_type", "resource_id", "institution")
_KEY = ("resource_type", "resource_id")


def test_insert_new_keeps_the_first_row_of_each_key(services: Services) -> None:
    """A resource's owner is the institution of its first version (projections/access.py): a batch that
    meets a key again, in the same statement or a later one, leaves the first row standing."""
    with services.views.write() as tx:
        tx.insert_new("resource_owners", _OWNER, _KEY, [("Observation", "o1", "IMSS"), ("Observation", "o1", "ISSSTE")])
    with services.views.write() as tx, tx.pipelined():  # as a projection batch of a request's own write runs
        tx.insert_new(
            "resource_owners",
            _OWNER,
            _KEY,
            [("Observation", "o1", "IMSS-Bienestar"), ("Observation", "o2", "ISSSTE"), ("Observation", "o2", "IMSS")],
        )
    with services.views.read() as tx:
        rows = tx.execute(
            "SELECT resource_id, institution FROM resource_owners WHERE resource_type = 'Observation' "
            "AND resource_id IN ('o1', 'o2') ORDER BY resource_id"
        ).fetchall()
    assert [tuple(row) for row in rows] == [("o1", "IMSS"), ("o2", "ISSSTE")]


def test_values_with_placeholder_characters_are_stored_as_sent(services: Services) -> None:
    """Values travel as parameters whatever they hold (``%s``, ``$1``, ``?``): never read as placeholders."""
    odd = ["50%s off", "$1", "?", "%", "$$"]
    with services.views.write() as tx, tx.pipelined():
        tx.insert_new("resource_owners", _OWNER, _KEY, [("Basic", value, value) for value in odd])
    with services.views.read() as tx:
        rows = tx.execute(
            "SELECT resource_id, institution FROM resource_owners WHERE resource_type = 'Basic'"
        ).fetchall()
    assert sorted(tuple(row) for row in rows) == sorted((value, value) for value in odd)
