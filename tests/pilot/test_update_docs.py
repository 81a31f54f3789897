"""update_docs writes only files that are really inside the workspace, whatever the
filesystem looks like when it opens them (a check made earlier could be raced)."""

import asyncio
import os
import threading

from pilot.tools import UpdateDocsTool


def update(tool, path, content="# new"):
    return asyncio.run(tool.execute({"path": path, "content": content}))


def make_tree(tmp_path):
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    (workspace / "docs").mkdir(parents=True)
    outside.mkdir()
    (outside / "README.md").write_text("outside original")
    return workspace, outside


def test_it_refuses_a_hard_link_to_an_outside_file_and_leaves_that_file_unchanged(tmp_path):
    workspace, outside = make_tree(tmp_path)
    os.link(outside / "README.md", workspace / "README.md")
    result = update(UpdateDocsTool(workspace), "README.md")
    assert result.is_error and "2 hard links" in result.content
    assert (outside / "README.md").read_text() == "outside original"


class SwapAfterCheck(UpdateDocsTool):
    """Replaces `victim` with a symlink to `target` right after the path was checked: the
    attacker winning the race between a check and the write."""

    def __init__(self, workspace, victim, target):
        super().__init__(workspace)
        self.victim, self.target = victim, target

    def parts(self, raw):
        checked = super().parts(raw)
        if self.victim.is_dir():
            self.victim.rmdir()
        else:
            self.victim.unlink()
        self.victim.symlink_to(self.target)
        return checked


def test_it_refuses_a_directory_swapped_for_a_symlink_after_the_check(tmp_path):
    workspace, outside = make_tree(tmp_path)
    result = update(SwapAfterCheck(workspace, workspace / "docs", outside), "docs/README.md")
    assert result.is_error and "'docs' is a symbolic link" in result.content
    assert (outside / "README.md").read_text() == "outside original"


def test_it_refuses_a_file_swapped_for_a_symlink_after_the_check(tmp_path):
    workspace, outside = make_tree(tmp_path)
    (workspace / "docs" / "README.md").write_text("inside")
    result = update(SwapAfterCheck(workspace, workspace / "docs" / "README.md", outside / "README.md"),
                    "docs/README.md")
    assert result.is_error and "'docs/README.md' is a symbolic link" in result.content
    assert (outside / "README.md").read_text() == "outside original"


def test_a_symlink_flipping_in_and_out_never_lets_a_write_reach_outside(tmp_path):
    workspace, outside = make_tree(tmp_path)
    docs, parked = workspace / "docs", workspace / "parked"
    stop = threading.Event()

    def flip():
        # docs is a real directory one moment and a link out of the workspace the next.
        while not stop.is_set():
            docs.rename(parked)
            docs.symlink_to(outside)
            docs.unlink()
            parked.rename(docs)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        tool = UpdateDocsTool(workspace)
        for n in range(300):
            update(tool, "docs/README.md", f"write {n}")
    finally:
        stop.set()
        flipper.join()
    assert (outside / "README.md").read_text() == "outside original"


def test_it_refuses_a_fifo_at_once_instead_of_hanging(tmp_path):
    workspace, _ = make_tree(tmp_path)
    os.mkfifo(workspace / "AGENTS.md")
    result = update(UpdateDocsTool(workspace), "AGENTS.md")
    assert result.is_error and "not a regular file" in result.content


def test_it_replaces_an_existing_file_and_accepts_an_absolute_path_inside(tmp_path):
    workspace, _ = make_tree(tmp_path)
    (workspace / "docs" / "AGENTS.md").write_text("a much longer old text than the new one")
    result = update(UpdateDocsTool(workspace), str(workspace / "docs" / "AGENTS.md"), "short")
    assert not result.is_error, result.content
    assert result.metadata["path"] == "docs/AGENTS.md"
    assert (workspace / "docs" / "AGENTS.md").read_text() == "short"


def test_it_folds_dot_dot_by_the_text_not_through_a_symlink(tmp_path):
    # "link/.." on disk would be the link target's parent (outside); as text it is the workspace.
    workspace, outside = make_tree(tmp_path)
    (workspace / "link").symlink_to(outside / "..")
    result = update(UpdateDocsTool(workspace), "link/../README.md")
    assert not result.is_error, result.content
    assert (workspace / "README.md").read_text() == "# new"
    assert not (tmp_path / "README.md").exists()
