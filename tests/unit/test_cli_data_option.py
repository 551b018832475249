"""Every ``ehr`` command takes ``--data`` (the data directory) like ``ehr serve``, and it reaches the
settings the command opens, for that command only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from ehr_core.settings import Settings
from fhir_api import cli


def _names(parser: argparse.ArgumentParser) -> list[str]:
    return [command.prog.removeprefix("ehr ") for command in cli.commands_of(parser)]


def test_every_command_takes_data() -> None:
    parser = cli.build_parser()
    commands = list(cli.commands_of(parser))
    # The walk reaches the nested commands too (ehr keys rotate, ehr audit replay, ehr clients add...).
    assert {"serve", "verify", "verify-proof", "audit replay", "keys rotate", "rebuild"} <= set(_names(parser))
    without = [command.prog for command in commands if "--data" not in command._option_string_actions]
    assert without == []


def test_data_reaches_the_settings_of_the_command_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHR_DATA_DIR", str(tmp_path / "elsewhere"))
    seen: list[Path] = []

    def handler(args: argparse.Namespace) -> int:
        seen.append(Settings().data_dir)
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    verify = next(command for command in cli.commands_of(parser) if command.prog == "ehr verify")
    verify.set_defaults(handler=handler)
    assert cli.main(["verify", "--data", str(tmp_path / "given")]) == 0
    assert seen == [tmp_path / "given"]
    assert os.environ["EHR_DATA_DIR"] == str(tmp_path / "elsewhere")


@pytest.mark.parametrize("institution", ["*", " "])
def test_clients_add_names_one_institution(
    institution: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A client of every institution could sign in any institution's user: only the server's own web view is.
    code = cli.main(
        ["clients", "add", "--institution", institution, "--public", "--redirect-uri", "https://app.example/cb",
         "--data", str(tmp_path / "data")]
    )  # fmt: skip
    assert code == 2
    assert "one institution" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
