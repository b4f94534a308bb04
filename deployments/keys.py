"""`python -m deployments.keys add USER`: create an API key for a user (printed once, stored hashed)."""

from __future__ import annotations

import argparse

from .http.auth import add_key
from .settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.keys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a key for a user")
    add.add_argument("user")
    add.add_argument("--file", default=None, help="key file (default: ATELIER_KEYS_FILE or data/keys.json)")
    args = parser.parse_args(argv)
    path = args.file or ServiceSettings().keys_file
    print(add_key(path, args.user))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
