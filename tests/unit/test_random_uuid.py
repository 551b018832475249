"""Request and audit record ids (``random_uuid``) stay unique whatever other code does to ``random``."""

from __future__ import annotations

import os
import random

from ehr_core.context import random_uuid


def test_seeding_the_global_generator_does_not_repeat_ids() -> None:
    # Hypothesis re-seeds the module-level generator for every example; audit ids repeated under it.
    random.seed(20261206)
    first = random_uuid()
    random.seed(20261206)
    second = random_uuid()
    assert first != second
    assert first.version == second.version == 4


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's own exit status is what the parent checks
        try:
            os.write(write, random_uuid().bytes)
        finally:
            os._exit(0)
    os.close(write)
    theirs = os.read(read, 16)
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(theirs) == 16
    assert random_uuid().bytes != theirs
