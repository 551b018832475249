"""The project's benchmark: HTTP figures beside the store's floor and ceiling, measured in one run.

Run ``.venv/bin/python -m bench`` (see ``bench/README.md``).
"""
