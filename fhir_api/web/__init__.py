"""The web view for clinicians and compliance officers, served by the FHIR server under ``/web``.

Server-rendered pages (Jinja2, inline SVG charts, a few lines of vanilla JavaScript) over the FHIR API
itself: patient search, the unified record across institutions, the record as it was at a moment, and the
audit trail with the ledger's verification. Spanish by default, English with ``?lang=en``.
"""

from fhir_api.web.routes import install

__all__ = ["install"]
