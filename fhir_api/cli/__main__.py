"""``python -m fhir_api.cli ...``: the ``ehr`` command without its installed script."""

from fhir_api.cli import main

raise SystemExit(main())
