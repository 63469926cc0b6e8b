"""`python -m dnrt.demo` refuses bad arguments with one line and a non-zero exit."""

from __future__ import annotations

import pytest

from dnrt.demo.__main__ import main


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--modes", "in,fancy"], "--modes must name"),
        (["--modes", ","], "--modes must name"),
        (["--size", "100"], "at least 512"),
    ],
)
def test_bad_arguments_give_one_error_line(argv: list[str], fragment: str, tmp_path, capsys) -> None:
    assert main([*argv, "--out", str(tmp_path / "demo")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not (tmp_path / "demo").exists()
