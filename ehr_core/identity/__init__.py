"""Identity across institutions: Mexican identifiers, the master patient index and its matcher."""
