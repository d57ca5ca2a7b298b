"""The README's configuration reference is the one the code generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ssehub._configdoc import BEGIN, END, config_reference
from ssehub.cli import main
from tests.conftest import REPO


def test_the_readme_configuration_table_matches_the_settings() -> None:
    readme = (REPO / "README.md").read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    assert readme[start:end].strip() == config_reference().strip(), (
        "README.md's configuration reference is out of date: run "
        "`.venv/bin/ssehub config-doc --write README.md`"
    )


def test_every_setting_has_a_row_with_its_flag_and_variable() -> None:
    from ssehub.settings import Settings

    table = config_reference()
    for name in Settings.__dataclass_fields__:
        assert f"`--{name.replace('_', '-')}` | `SSEHUB_{name.upper()}` |" in table


def test_config_doc_prints_the_table_and_writes_it_between_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [sys.executable, "-m", "ssehub", "config-doc"]
    printed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0
    assert printed.stdout == config_reference()

    document = tmp_path / "doc.md"
    document.write_text(f"# Title\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    assert main(["config-doc", "--write", str(document)]) == 0
    assert document.read_text() == f"# Title\n\n{BEGIN}\n{config_reference()}{END}\n\nafter\n"

    unmarked = tmp_path / "plain.md"
    unmarked.write_text("no markers\n")
    assert main(["config-doc", "--write", str(unmarked)]) == 1
    assert capsys.readouterr().err == (
        f"ssehub config-doc: error: {unmarked} has no config-reference markers\n"
    )
