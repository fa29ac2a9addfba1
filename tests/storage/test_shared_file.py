"""storage/shared_file.py: processes take turns on a shared cache file, including while one of
them is still creating it."""

import threading
import time

import duckdb
import pytest

from curate.storage import shared_file
from curate.storage.shared_file import connect_in_turn


def test_a_file_being_created_is_waited_for_not_an_error(tmp_path):
    path = tmp_path / "c.duckdb"
    path.write_bytes(b"\0" * 64)  # what another process's half-written file looks like for a moment

    def finish():
        time.sleep(0.5)
        done = tmp_path / "done.duckdb"
        duckdb.connect(str(done)).execute("CREATE TABLE answers AS SELECT 42 AS x").close()
        done.replace(path)

    writer = threading.Thread(target=finish)
    writer.start()
    with connect_in_turn(str(path), wait_s=30) as con:
        assert con.execute("SELECT x FROM answers").fetchone() == (42,)
    writer.join()


def test_a_file_that_never_becomes_a_database_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"not a database at all" * 100)
    monkeypatch.setattr(shared_file, "CREATION_WAIT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(duckdb.IOException, match="not a valid DuckDB database file"):
        with connect_in_turn(str(path), wait_s=30):
            pass
    assert time.monotonic() - start < 5
