"""Synthetic data for demonstrations and tests: never real people (NOM-024: CURPs are generated to pass
the check digit only because they belong to nobody)."""
