"""The two patch formats of the FHIR ``patch`` interaction (R4 http.html#patch), under one name.

* JSON Patch (RFC 6902): :func:`~ehr_core.resources.json_patch.apply_json_patch`;
* FHIRPath Patch (R4 fhirpatch.html): :func:`~ehr_core.resources.fhirpath_patch.apply_fhirpath_patch`.

Each format lives in its own module; what they share is in :mod:`ehr_core.resources.patch_common`, and
their errors (:class:`~ehr_core.errors.PatchError` and its two kinds) in :mod:`ehr_core.errors`.
"""

from __future__ import annotations

from ehr_core.errors import MalformedPatch, PatchError, PatchNotApplicable
from ehr_core.resources.fhirpath_patch import RepeatsLookup, apply_fhirpath_patch
from ehr_core.resources.json_patch import apply_json_patch

__all__ = [
    "MalformedPatch",
    "PatchError",
    "PatchNotApplicable",
    "RepeatsLookup",
    "apply_fhirpath_patch",
    "apply_json_patch",
]
