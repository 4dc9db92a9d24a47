"""The reloader leaves an editor's temporary files out of what changed, also when
the watcher reports their creation and their deletion in different batches."""

from __future__ import annotations

from pathlib import Path

from watchfiles import Change

from eightys.reloader import _transient


def test_a_save_in_one_batch(tmp_path: Path) -> None:
    css, tmp = tmp_path / "style.css", str(tmp_path / "style.css.tmp-save")
    css.write_text("h1 {}")
    vanished: set[str] = set()
    changes = {(Change.added, tmp), (Change.deleted, tmp), (Change.added, str(css))}
    assert _transient(changes, vanished) == {tmp}
    assert vanished == set()


def test_a_save_split_over_two_batches(tmp_path: Path) -> None:
    css, tmp = tmp_path / "style.css", str(tmp_path / "style.css.tmp-save")
    css.write_text("h1 {}")
    vanished: set[str] = set()
    assert _transient({(Change.added, tmp)}, vanished) == {tmp}  # renamed already
    assert vanished == {tmp}
    second = {(Change.deleted, tmp), (Change.added, str(css))}
    assert _transient(second, vanished) == {tmp}
    assert vanished == set()


def test_a_real_deletion_and_a_new_file_count(tmp_path: Path) -> None:
    page, new = str(tmp_path / "old.html"), tmp_path / "new.html"
    new.write_text("new")
    vanished: set[str] = set()
    changes = {(Change.deleted, page), (Change.added, str(new))}
    assert _transient(changes, vanished) == set()
