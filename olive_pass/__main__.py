"""`python -m olive_pass FILE`: write Olive's package config with `MiCompress` added, for
`olive run --config WORKFLOW --package-config FILE`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from olive_pass.package_config import package_config


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m olive_pass PACKAGE_CONFIG.json", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(json.dumps(package_config(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
