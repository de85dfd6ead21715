"""A nightly rotation of forced snapshots, checked day by day (test and benchmark).

An instance with a root disk and two volumes; every day each volume gets a
token written through the instance and a forced snapshot, and its oldest
snapshot is deleted beyond its retention (7 and 3 by default). After every
day: the deepest chain of the instance, every retained snapshot's tokens
(exactly those it had when taken), every volume's tokens through the
instance and through its backing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmdk_snap.driver import Driver, Volume
from vmdk_snap.testing import Control
from vmdk_snap.types import Moref
from vmdk_snap.vsphere.volumeops import VolumeOps

DATASTORES = ("ds-shared-1", "ds-shared-2", "ds-local-h0")


@dataclass
class Rotation:
    """The outcome of a run, with the figures the benchmark prints."""

    days: int = 0
    snapshots: int = 0
    deepest: int = 0
    bytes_copied: int = 0
    volume_bytes: list[int] = field(default_factory=list)  # data per snapshot taken
    files: list[dict[str, int]] = field(default_factory=list)  # per day

    @property
    def template_bytes(self) -> int:
        """What Cinder's template format copies: the whole volume, per snapshot."""
        return sum(self.volume_bytes)


def _tokens_size(tokens: list[str]) -> int:
    return sum(len(t) + 1 for t in tokens)


def run_rotation(
    driver: Driver,
    ops: VolumeOps,
    ctl: Control,
    *,
    days: int,
    keep: tuple[int, ...] = (7, 3),
    fill: int = 0,
    max_depth: int = 16,
    on_day: Any = None,
) -> Rotation:
    """Seed ``instance-two-volumes`` and rotate; raise AssertionError on the first fault.

    ``fill`` bytes written to each volume first stand for its data (the
    volume's size, for the bytes-copied figures).
    """
    seeded = ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vols = seeded["volumes"]
    instance = Moref("VirtualMachine", inst["moref"])
    info = ops.get_vm(instance)
    keys = [info.disk_by_uuid(v["disk_uuid"]).key for v in vols]  # type: ignore[union-attr]
    volumes = [Volume(v["id"], "in-use", inst["uuid"]) for v in vols]
    backings = [Moref("VirtualMachine", v["moref"]) for v in vols]
    bkeys = [ops.get_vm(b).disks[0].key for b in backings]
    for key in keys:  # in lines of at most 4 KiB, as the simulator reads them
        for start in range(0, fill, 4096):
            ctl.write(inst["moref"], key, "f" * min(4096, fill - start))
    ctl.reset_bytes_copied()
    out = Rotation()
    kept: list[list[tuple[str, list[str]]]] = [[] for _ in vols]
    for day in range(1, days + 1):
        for i, volume in enumerate(volumes):
            ctl.write(inst["moref"], keys[i], f"day{day}-v{i}")
            tokens = ctl.read_disk(inst["moref"], keys[i])["tokens"]
            name = f"day-{day:03}"
            driver.create_snapshot(volume, name, force=True)
            out.snapshots += 1
            out.volume_bytes.append(_tokens_size(tokens))
            kept[i].append((name, tokens))
            while len(kept[i]) > keep[i]:
                old, _ = kept[i].pop(0)
                assert driver.delete_snapshot(volume, old)
            depth = max(d.depth for d in ops.get_vm(instance).disks)
            out.deepest = max(out.deepest, depth)
            assert depth <= max_depth, f"day {day}, volume {i}: a chain is {depth} deltas deep"
        _check_day(
            ops,
            ctl,
            inst["moref"],
            list(zip(keys, backings, bkeys, strict=True)),
            kept=kept,
            day=day,
        )
        out.files.append({ds: len(ctl.files(ds)) for ds in DATASTORES})
        out.days = day
        if on_day is not None:
            on_day(day, out)
    out.bytes_copied = int(ctl.bytes_copied()["total"])
    return out


def _check_day(
    ops: VolumeOps,
    ctl: Control,
    instance: str,
    disks: list[tuple[int, Moref, int]],
    *,
    kept: list[list[tuple[str, list[str]]]],
    day: int,
) -> None:
    """``disks``: per volume, its disk key on the instance, its backing and key there."""
    for i, (key, backing, bkey) in enumerate(disks):
        info = ops.get_vm(backing)
        names = {n.name: n for n in info.all_snapshots()}
        assert sorted(names) == sorted(n for n, _ in kept[i]), f"day {day}, volume {i}"
        for name, tokens in kept[i]:
            got = ctl.read_snapshot(names[name].ref.value, bkey)["tokens"]
            assert got == tokens, f"day {day}: snapshot {name} of volume {i} changed"
        now = ctl.read_disk(instance, key)["tokens"]
        assert now[-day:] == [f"day{d}-v{i}" for d in range(1, day + 1)]
        assert ctl.read_disk(backing.value, bkey)["tokens"] == now, f"day {day}: backing {i}"
