"""``python -m vmdk_snap.cli``: the same as the ``vmdk-snap`` command."""

from __future__ import annotations

import sys

from vmdk_snap.cli.main import main

sys.exit(main())
