"""Tables, trees, JSON documents and progress bars, as the operator sees them."""

from __future__ import annotations

import io
import json

from vmdk_snap.cli.output import SCHEMA, Output, TreeNode, render_table, render_tree


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_table_is_aligned_with_capital_headers_and_readable_cells() -> None:
    text = render_table(
        ["volume", "depth", "dup"], [["volume-a", 2, True], ["volume-bb", 10, None]]
    )
    assert text.splitlines() == [
        "VOLUME     DEPTH  DUP",
        "volume-a   2      yes",
        "volume-bb  10     -",
    ]


def test_tree_draws_branches_and_last_children() -> None:
    tree = [TreeNode("base", (TreeNode("a", (TreeNode("a1"),)), TreeNode("b")))]
    assert render_tree(tree).splitlines() == [
        "└─ base",
        "   ├─ a",
        "   │  └─ a1",
        "   └─ b",
    ]


def test_json_document_carries_schema_and_command_and_nothing_else_in_json_mode() -> None:
    out, err = io.StringIO(), io.StringIO()
    o = Output(out, err, as_json=True)
    o.text("for people only")
    o.document("list", {"volume": "x"})
    assert json.loads(out.getvalue()) == {"schema": SCHEMA, "command": "list", "volume": "x"}
    assert err.getvalue() == ""


def test_text_mode_prints_no_json() -> None:
    out = io.StringIO()
    o = Output(out, io.StringIO(), as_json=False)
    o.document("list", {"volume": "x"})
    o.text("hello")
    assert out.getvalue() == "hello\n"


def test_progress_draws_on_a_terminal_only() -> None:
    tty = Tty()
    bar = Output(io.StringIO(), tty).progress()
    bar("CreateSnapshot_Task", 50)
    bar("CreateSnapshot_Task", 100)
    bar("RelocateVM_Task", None)
    bar.close()
    drawn = tty.getvalue()
    assert "\rCreateSnapshot_Task [############............]  50%" in drawn
    assert "[########################] 100%\n\rRelocateVM_Task\n" in drawn

    piped = io.StringIO()
    quiet = Output(io.StringIO(), piped).progress()
    quiet("CreateSnapshot_Task", 50)
    quiet.close()
    assert piped.getvalue() == ""
