"""Layers that rescue recognises but images whole, every byte, each in its class so that
every caller asks the class as for any filesystem (browse says why there are no files, the
planner keeps the size, `rescue info` shows the layer and the reason, model/stack.IMAGED_WHOLE;
docs/lvm-luks.md). The class `ImagedWhole` answers for:

- LUKS 1 or 2 (blkid TYPE crypto_LUKS). Without the volume opened its free space
  cannot be told from its data: ciphertext everywhere. Capture through a volume opened
  read-only with the passphrase is the next step; until then, every byte.
- a member of an md RAID array (linux_raid_member). The array is not
  assembled; each member is imaged as it is.

Their used-block map is the whole volume, so a capture reads every byte (all-zero chunks are
still stored as ZERO), and a restore writes them back where they were."""

from __future__ import annotations

from collections.abc import Mapping

from rescue.filesystems.base import Examined, Filesystem, FsInfo, Volume, probe
from rescue.model.extents import Extent
from rescue.model.stack import LUKS_TYPE, MD_TYPE


class ImagedWhole(Filesystem):
    names = (LUKS_TYPE, MD_TYPE)
    can_grow = False
    grow_fills = False
    can_shrink = False
    shrink_moves_data = False
    resize_floor = 0
    mount_type = None
    mount_ro = None
    mount_rw = None
    image_store = None
    owners = False
    no_files = "encrypted (LUKS) or an md RAID member: not opened or assembled, so no files to show"
    mtools = False
    linux_config = False
    can_renumber = False
    can_name_files = False

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        found = probed if probed is not None else probe(vol)
        info = FsInfo(
            type=self.type,
            uuid=found.get("UUID") or None,
            label=found.get("LABEL") or None,
            used_bytes=None,
            min_size=None,
            map_source="whole",
        )
        return Examined(info, [Extent(0, vol.size)])
