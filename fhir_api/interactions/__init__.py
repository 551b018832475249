"""One module per FHIR RESTful interaction (R4 §3.1.0), as Blaze arranges them."""
