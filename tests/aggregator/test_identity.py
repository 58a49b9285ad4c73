"""The identity map: effective dates, unmapped accounts, clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from afmon.aggregator.cli.main import main as afmon
from afmon.aggregator.identity.accounts import IdentityError, IdentityMap, load_identity_file
from afmon.aggregator.store.db import create_schema, make_engine

IDENTITY = """
[vos.atlas]
issuer = "https://atlas-auth.cern.ch/"

[[members]]
vo = "atlas"
subject = "sub-alice"
display_name = "Alice"
groups = ["/atlas", "/atlas/higgs"]
accounts = [
  { facility = "af", local = "alice" },
  { facility = "af", local = "shared", valid_until = "2026-06-01T00:00:00Z" },
]

[[members]]
vo = "atlas"
subject = "sub-bob"
display_name = "Bob"
groups = ["/atlas"]
group = "/atlas/top"
accounts = [{ facility = "af", local = "shared", valid_from = "2026-06-01T00:00:00Z" }]
"""
JUNE = 1_780_272_000.0  # 2026-06-01T00:00:00Z


@pytest.fixture
def identity(tmp_path: Path) -> IdentityMap:
    path = tmp_path / "identity.toml"
    path.write_text(IDENTITY)
    engine = make_engine(f"sqlite:///{tmp_path}/a.sqlite")
    create_schema(engine)
    assert load_identity_file(engine, path) == 3
    return IdentityMap(engine)


def test_accounts_resolve_to_members_with_their_group(identity: IdentityMap) -> None:
    alice = identity.resolve("af", "alice", JUNE)
    assert alice.id == "https://atlas-auth.cern.ch/|sub-alice"
    assert (alice.vo, alice.grp) == ("atlas", "/atlas/higgs")


def test_effective_dates_hand_an_account_over(identity: IdentityMap) -> None:
    assert identity.resolve("af", "shared", JUNE - 1).id.endswith("|sub-alice")
    bob = identity.resolve("af", "shared", JUNE)
    assert bob.id.endswith("|sub-bob") and bob.grp == "/atlas/top"


def test_unknown_accounts_go_to_the_facilitys_unmapped_member(identity: IdentityMap) -> None:
    ref = identity.resolve("af", "mallory", JUNE)
    assert (ref.id, ref.vo, ref.grp) == ("afmon:unmapped|af", "unmapped", "unmapped")
    assert identity.resolve("other-af", "alice", JUNE).id == "afmon:unmapped|other-af"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vos = 3", "vos: Input should be a valid dictionary"),
        (
            '[vos.atlas]\nissuer = "i"\n[[members]]\nvo = "cms"\nsubject = "s"\ndisplay_name = "x"',
            "VO 'cms' is not declared under [vos]",
        ),
        (
            '[vos.atlas]\nissuer = "i"\n[[members]]\nvo = "atlas"\nsubject = "s"\n'
            'display_name = "x"\naccounts = [{ facility = "af", local = "a", '
            'valid_from = "2026-01-01T00:00:00" }]',
            "must carry a time zone",
        ),
        ("[vos.atlas\n", "not valid TOML"),
        (
            '[vos.atlas]\nissuer = "i"\n[[members]]\nvo = "atlas"\nsubject = "s"\n'
            'display_name = "x"\naccounts = [{ facility = "af", local = "a" }]\n'
            '[[members]]\nvo = "atlas"\nsubject = "t"\ndisplay_name = "y"\n'
            'accounts = [{ facility = "af", local = "a", valid_from = 2026-01-01 }]',
            "members[1].accounts[0]: account 'a' at 'af' is already mapped by "
            "members[0].accounts[0]",
        ),
        (
            '[vos.atlas]\nissuer = "i"\n[[members]]\nvo = "atlas"\nsubject = "s"\n'
            'display_name = "x"\n[[members]]\nvo = "atlas"\nsubject = "s"\ndisplay_name = "y"',
            "members[1]: subject 's' of VO 'atlas' is already members[0]",
        ),
        ('[vos.atlas]\nissuer = "i"\ncolour = "red"', "vos.atlas.colour: Extra inputs"),
    ],
)
def test_bad_identity_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    engine = make_engine(f"sqlite:///{tmp_path}/a.sqlite")
    create_schema(engine)
    with pytest.raises(IdentityError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_identity_file(engine, path)


def test_toml_dates_without_time_are_midnight_utc(tmp_path: Path) -> None:
    path = tmp_path / "identity.toml"
    path.write_text(IDENTITY.replace('"2026-06-01T00:00:00Z"', "2026-06-01"))
    engine = make_engine(f"sqlite:///{tmp_path}/a.sqlite")
    create_schema(engine)
    load_identity_file(engine, path)
    identity = IdentityMap(engine)
    assert identity.resolve("af", "shared", JUNE - 1).id.endswith("|sub-alice")
    assert identity.resolve("af", "shared", JUNE).id.endswith("|sub-bob")


def test_identity_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(IDENTITY)
    assert afmon(["identity", "check", str(good)]) == 0
    assert "1 VOs, 2 members, 3 accounts: OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("vos = 3")
    assert afmon(["identity", "check", str(bad)]) == 1
    assert "vos: Input should be a valid dictionary" in capsys.readouterr().err
