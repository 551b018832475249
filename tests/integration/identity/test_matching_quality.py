"""Matching quality on a labelled synthetic set with realistic registration noise, through the real
pipeline (application → log → identity follower → Person streams), on SQLite and PostgreSQL.

Pairs of records of one true person are positives; the index's automatic links are predictions.
Targets: precision of automatic links ≥ 0.99, recall ≥ 0.95, zero links on placeholder CURPs.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from ehr_core.context import WriteContext
from ehr_core.demo.labelled import labelled_records
from ehr_core.demo.people import patient_resource
from ehr_core.identity.identifiers import CURP_PLACEHOLDER
from ehr_core.settings import Settings
from fhir_api.services import Services


def test_matching_precision_and_recall_on_noisy_records(settings: Settings) -> None:
    records = labelled_records(people=500, seed=7)
    services = Services.open(settings, follow=False)
    try:
        truth: dict[str, int] = {}
        placeholders: set[str] = set()
        for n, record in enumerate(records):
            patient_id = f"r{n}"
            context = WriteContext(institution=record.institution, user="registro")
            services.application.update("Patient", patient_id, patient_resource(record, patient_id), context)
            truth[patient_id] = record.person
            if record.curp == CURP_PLACEHOLDER:
                placeholders.add(patient_id)
        services.projector.catch_up()
        assert services.identity is not None
        services.identity.catch_up()
        with services.views.read() as tx:
            rows = tx.execute("SELECT record_id, person_id FROM mpi_records").fetchall()
            review = tx.execute("SELECT COUNT(*) FROM mpi_review").fetchone()
    finally:
        services.close()
    assigned = {str(r[0]): str(r[1]) for r in rows}
    assert set(assigned) == set(truth)
    counts: Counter[str] = Counter()
    for a, b in combinations(sorted(truth), 2):
        same_truth, same_person = truth[a] == truth[b], assigned[a] == assigned[b]
        # A record with the placeholder CURP is never linked automatically (by design): its true pairs
        # are counted apart ("placeholder_fn"), not as misses of the matcher.
        placeholder = a in placeholders or b in placeholders
        if same_truth and same_person:
            counts["tp"] += 1
        elif same_truth:
            counts["placeholder_fn" if placeholder else "fn"] += 1
        elif same_person:
            counts["fp"] += 1
    sizes = Counter(assigned.values())
    placeholder_links = sum(1 for record in placeholders if sizes[assigned[record]] > 1)
    precision = counts["tp"] / max(1, counts["tp"] + counts["fp"])
    recall = counts["tp"] / max(1, counts["tp"] + counts["fn"])
    overall = counts["tp"] / max(1, counts["tp"] + counts["fn"] + counts["placeholder_fn"])
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    print(
        f"\nmatching quality: {len(records)} records of {len(set(truth.values()))} people; "
        f"true pairs without a placeholder CURP {tp + fn}: TP={tp} FP={fp} FN={fn} "
        f"precision={precision:.4f} recall={recall:.4f}; with the {counts['placeholder_fn']} true pairs of "
        f"placeholder-CURP records (never auto-linked) recall={overall:.4f}; "
        f"review queue {review[0] if review else 0}; "
        f"placeholder records {len(placeholders)}, linked {placeholder_links}"
    )
    assert precision >= 0.99
    assert recall >= 0.95
    assert placeholder_links == 0
