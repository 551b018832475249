"""The ``ehr`` command's subcommands, one module each."""
