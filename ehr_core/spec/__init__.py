"""Spec facts as data: modules generated from the official FHIR R4 definitions, and their generators.

The generated modules are committed and are all the running server reads; :mod:`ehr_core.spec.generate`
reads the definitions (``../shared/corpus/spec/r4/``) only when run by hand (``make spec``) or by the drift
test, which fails when a committed module differs from what the definitions give.
"""
