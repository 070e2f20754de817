"""A deleted SQLite database is refused while instances of an earlier run remain (a
fresh database would sweep them, jobs and all); a first start goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from outgrow.controlplane.datadir import refuse_missing_database
from outgrow.errors import ConflictError


def test_first_start_goes_on(tmp_path: Path) -> None:
    refuse_missing_database(tmp_path, tmp_path / "outgrow.db")
    (tmp_path / "instances" / "half-made").mkdir(parents=True)  # no record: not an instance
    refuse_missing_database(tmp_path, tmp_path / "outgrow.db")


def test_instances_without_their_database_are_refused(tmp_path: Path) -> None:
    inst = tmp_path / "instances" / "3f9a2c1d"
    inst.mkdir(parents=True)
    (inst / "instance.json").write_text("{}")
    with pytest.raises(ConflictError, match=r"database .* is missing, but 1 instance"):
        refuse_missing_database(tmp_path, tmp_path / "outgrow.db")
    (tmp_path / "outgrow.db").write_bytes(b"")  # there: the store decides
    refuse_missing_database(tmp_path, tmp_path / "outgrow.db")


def test_a_damaged_database_is_refused_clearly(tmp_path: Path) -> None:
    from outgrow.errors import ConfigError
    from outgrow.store import Store

    db = tmp_path / "outgrow.db"
    db.write_bytes(b"this is not a database" * 200)
    with pytest.raises(ConfigError, match=r"outgrow\.db is damaged \(file is not a database\)"):
        Store.open(f"sqlite:///{db}")
    assert db.read_bytes() == b"this is not a database" * 200  # nothing was changed
