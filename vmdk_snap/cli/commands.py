"""The ``vmdk-snap`` subcommands: each a thin adapter over :class:`vmdk_snap.driver.Driver`."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any, Protocol

from vmdk_snap.cli import views
from vmdk_snap.cli.base import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_RECOVER,
    Context,
    UsageError,
    parse_volume,
)
from vmdk_snap.driver import Volume, validate_snapshot_name
from vmdk_snap.volume_state import IN_USE

__all__ = ["add_command", "register"]


class _Subparsers(Protocol):
    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def add_command(
    sub: _Subparsers, common: argparse.ArgumentParser, name: str, summary: str, examples: str
) -> argparse.ArgumentParser:
    """A subcommand parser with an ``Examples:`` block in its help, as govc's."""
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="Examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )


def register(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    for add in (_snapshot, _delete, _revert, _list, _check, _consolidate, _compact, _recover):
        add(sub, common)


# -- snapshot ------------------------------------------------------------------


def _snapshot(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "snapshot",
        "Snapshot a volume, or several of one instance at one moment; attached (in-use) "
        "ones only with --force.",
        """
        vmdk-snap snapshot 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 --name nightly
        vmdk-snap snapshot 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 --name pre-upgrade --force --dry-run
        vmdk-snap snapshot 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 --name db --force --quiesce --json
        vmdk-snap snapshot DATA_VOLUME LOG_VOLUME --name db-0300 --force --quiesce
        vmdk-snap snapshot --instance 9c1e7a4b-2f3d-4e5a-8b6c-7d8e9f0a1b2c --name all --force

        A snapshot NAME the volume already has is reported ("already exists",
        JSON "created": false) and nothing changes, even without --force: a
        repeated request is a retry and gets the first snapshot.

        Several volumes (or --instance: all its attached volumes, or those
        named) are taken at one moment: one temporary snapshot of their
        instance freezes them all, and all are made or none. They must be
        attached to one instance; available ones get ordinary snapshots.
        JSON lists each member's record (state available or error).
        """,
    )
    p.add_argument("volume", metavar="VOLUME", nargs="*")
    p.add_argument(
        "--instance",
        metavar="UUID",
        help="the instance whose volumes (all attached, or those named) are taken at one moment",
    )
    p.add_argument("--name", required=True, help="snapshot name (Cinder: snapshot-<id>)")
    p.add_argument("--force", action="store_true", help="snapshot even if attached (in-use)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--quiesce", action="store_true", help="quiesce the guest (needs Tools)")
    p.set_defaults(run=run_snapshot)


def run_snapshot(ctx: Context) -> int:
    a = ctx.args
    if not a.volume and not a.instance:
        raise UsageError("name a VOLUME (or several), or --instance UUID")
    if len(a.volume) > 1 or a.instance:
        return _run_group(ctx)
    volume, name = parse_volume(a.volume[0]), validate_snapshot_name(a.name)
    with ctx.driver() as driver:
        if a.dry_run:
            plan = driver.plan_snapshot(volume, name, force=a.force)
            return views.show_plan(ctx.out, "snapshot", volume.id, plan)
        progress = ctx.out.progress()
        try:
            result = driver.take_snapshot(
                volume, name, force=a.force, quiesce=a.quiesce, on_progress=progress.listener()
            )
        finally:
            progress.close()
    ctx.out.text(f"volume-{volume.id}: {views.snapshot_outcome(result)}")
    ctx.out.document(
        "snapshot",
        {
            "volume": volume.id,
            "created": result.created,
            "snapshot": views.snapshot_doc(result.node),
        },
    )
    return EXIT_OK


def _run_group(ctx: Context) -> int:
    """Several volumes of one instance at one moment (vmdk_snap.group_snapshots)."""
    a = ctx.args
    name = validate_snapshot_name(a.name)
    ids = [parse_volume(v).id for v in a.volume]
    with ctx.driver() as driver:
        if a.instance and not ids:
            ids = driver.attached_volumes(a.instance)
        volumes = [Volume(v, IN_USE, a.instance) if a.instance else Volume(v) for v in ids]
        if a.dry_run:
            plan = driver.plan_group_snapshot(volumes, name, force=a.force)
            return views.show_plan(ctx.out, "snapshot", ids[0], plan, ids)
        result = driver.create_group_snapshot(volumes, name, force=a.force, quiesce=a.quiesce)
    for m in result.members:
        ctx.out.text(views.member_line(m, ids))
    ctx.out.document(
        "snapshot",
        {
            "name": name,
            "instance": result.instance_uuid,
            "members": [views.member_doc(m) for m in result.members],
        },
    )
    return EXIT_OK


# -- delete / revert -----------------------------------------------------------


def _delete(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "delete",
        "Delete a snapshot of a volume (a snapshot already gone is not an error).",
        """
        vmdk-snap delete 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 nightly
        vmdk-snap delete volume-3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 snapshot-77b0c4de --json
        """,
    )
    p.add_argument("volume", metavar="VOLUME")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot name")
    p.set_defaults(run=run_delete)


def run_delete(ctx: Context) -> int:
    volume, name = parse_volume(ctx.args.volume), validate_snapshot_name(ctx.args.snapshot)
    with ctx.driver() as driver:
        deleted = driver.delete_snapshot(volume, name)
    if deleted:
        ctx.out.text(f"deleted snapshot {name} of volume-{volume.id}")
    else:
        ctx.out.text(f"snapshot {name} of volume-{volume.id} was already gone: nothing to do")
    ctx.out.document("delete", {"volume": volume.id, "snapshot": name, "deleted": deleted})
    return EXIT_OK


def _revert(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "revert",
        "Revert a detached (available) volume to a snapshot; later changes are lost.",
        """
        vmdk-snap revert 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 nightly
        """,
    )
    p.add_argument("volume", metavar="VOLUME")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot name")
    p.set_defaults(run=run_revert)


def run_revert(ctx: Context) -> int:
    volume, name = parse_volume(ctx.args.volume), validate_snapshot_name(ctx.args.snapshot)
    with ctx.driver() as driver:
        driver.revert_to_snapshot(volume, name)
    ctx.out.text(f"reverted volume-{volume.id} to snapshot {name}")
    ctx.out.document("revert", {"volume": volume.id, "snapshot": name, "reverted": True})
    return EXIT_OK


# -- list / check ---------------------------------------------------------------


def _list(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "list",
        "Show a volume's snapshots and its disk chain(s) as trees.",
        """
        vmdk-snap list 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23
        vmdk-snap list volume-3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23 --json | jq '.snapshots[].name'
        """,
    )
    p.add_argument("volume", metavar="VOLUME")
    p.set_defaults(run=run_list, reads_only=True)


def run_list(ctx: Context) -> int:
    volume = parse_volume(ctx.args.volume)
    with ctx.driver() as driver:
        state = driver.describe(volume)
    ctx.out.text(views.list_text(state))
    ctx.out.document("list", views.volume_doc(state))
    return EXIT_OK


def _check(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "check",
        "Check volumes: where attached, duplicated chain, consolidationNeeded, depth, "
        "forced snapshots left, host and datastore.",
        """
        vmdk-snap check 3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23
        vmdk-snap check --all
        vmdk-snap check --all --json | jq '.volumes[] | select(.duplicated)'
        vmdk-snap check --all --json | jq '.volumes[] | select(.forced_snapshots_left == 0)'
        """,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("volume", metavar="VOLUME", nargs="?")
    target.add_argument("--all", action="store_true", help="every Cinder volume in vCenter")
    p.set_defaults(run=run_check, reads_only=True)


def run_check(ctx: Context) -> int:
    if not ctx.args.all:
        volume = parse_volume(ctx.args.volume)
        with ctx.driver() as driver:
            state = driver.describe(volume)
        ctx.out.text(views.check_text(state))
        ctx.out.document("check", {"volumes": [views.volume_doc(state)], "errors": []})
        return EXIT_OK
    with ctx.driver() as driver:
        states, failed = driver.describe_all()
    errors = [views.error_doc(vid, exc) for vid, exc in failed]
    ctx.out.text(views.check_all_text(states, errors))
    ctx.out.document("check", {"volumes": [views.volume_doc(s) for s in states], "errors": errors})
    return EXIT_PARTIAL if errors else EXIT_OK


# -- consolidate / recover --------------------------------------------------------


def _volume_plan_command(
    sub: _Subparsers,
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    run: Callable[[Context], int],
) -> None:
    """A command on one VOLUME whose --dry-run prints the plan (its examples both ways)."""
    vol = "3f2a9c1e-5b7d-4c2a-9e41-0d6f8a7b1c23"
    examples = f"vmdk-snap {name} {vol} --dry-run\nvmdk-snap {name} {vol}\n"
    p = add_command(sub, common, name, summary, examples)
    p.add_argument("volume", metavar="VOLUME")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(run=run)


def _consolidate(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    summary = "Re-join a volume's duplicated chain: the backing takes the instance's newer VMDK."
    _volume_plan_command(sub, common, "consolidate", summary, run_consolidate)


def run_consolidate(ctx: Context) -> int:
    volume = parse_volume(ctx.args.volume)
    with ctx.driver() as driver:
        if ctx.args.dry_run:
            return views.show_plan(
                ctx.out, "consolidate", volume.id, driver.plan_consolidate(volume)
            )
        progress = ctx.out.progress()
        try:
            changed = driver.consolidate(volume, on_progress=progress.listener())
        finally:
            progress.close()
        state = driver.describe(volume)
    if changed:
        head = f"consolidated volume-{volume.id}"
    else:
        head = f"volume-{volume.id}: nothing to consolidate (its chain is not duplicated)"
    ctx.out.text(head + "\n" + views.list_text(state))
    ctx.out.document("consolidate", {**views.volume_doc(state), "consolidated": changed})
    return EXIT_OK


def _compact(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    summary = (
        "Give the volume's instance back the disk chains it had before its forced snapshots: "
        "merge the deltas they left once no snapshot holds them (all the instance's disks at "
        "once, so this compacts every volume of that instance). Deleting an attached volume's "
        "snapshot does this by itself."
    )
    _volume_plan_command(sub, common, "compact", summary, run_compact)


def run_compact(ctx: Context) -> int:
    volume = parse_volume(ctx.args.volume)
    with ctx.driver() as driver:
        if ctx.args.dry_run:
            return views.show_plan(ctx.out, "compact", volume.id, driver.plan_compact(volume))
        compacted = driver.compact(volume)
        # Why not, only when it did not (compact plans under the locks itself).
        notes = () if compacted else driver.plan_compact(volume).notes
        state = driver.describe(volume)
    if compacted:
        head = f"compacted the instance of volume-{volume.id}"
    else:
        head = f"volume-{volume.id}: " + (notes[0] if notes else "nothing to compact")
    ctx.out.text(head + "\n" + views.list_text(state))
    ctx.out.document("compact", {**views.volume_doc(state), "compacted": compacted})
    return EXIT_OK


def _recover(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "recover",
        "Finish or roll back every workflow a crash interrupted (from the journal), then "
        "settle temporary instance snapshots no running workflow owns. Exit 9 when one "
        "could not be settled (the table says what to run), else 0.",
        """
        vmdk-snap recover
        vmdk-snap recover --journal /var/lib/vmdk-snap/journal.sqlite --json
        vmdk-snap recover --adopt
        """,
    )
    p.add_argument(
        "--adopt",
        action="store_true",
        help="also settle temporary snapshots no journal here knows (only when no other "
        "host or journal runs vmdk-snap workflows on those instances)",
    )
    p.set_defaults(run=run_recover)


def run_recover(ctx: Context) -> int:
    with ctx.driver() as driver:
        results = driver.recover(adopt=ctx.args.adopt)
    ctx.out.text(views.recover_text(results))
    ctx.out.document("recover", {"workflows": [views.recovery_doc(r) for r in results]})
    # busy: a live process runs it; nothing was interrupted there.
    unsettled = [r for r in results if r.outcome in ("failed", "left")]
    return EXIT_RECOVER if unsettled else EXIT_OK
