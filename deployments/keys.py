"""API keys of the running service, live: every proxy and replica reads the same key table.

    python -m deployments.keys add USER                # prints a new key, once
    python -m deployments.keys list [USER]             # key ids, users, creation times
    python -m deployments.keys revoke USER --key ID    # one key; `--all` for every key of USER

The table is `api_keys` in the gallery's LanceDB (ATELIER_KEYS_URI, else ATELIER_LANCEDB_URI, else
data/lancedb: run it from the checkout the service runs from, or set the variable). It keeps sha256
digests only. A change counts from the next request on every node; no restart.

Rotation: `add` a second key for the user, move the client to it, then `revoke` the old one by the id
`list` shows. Both keys work in between.
"""

from __future__ import annotations

import argparse
import sys

from storage.errors import AtelierError

from .http.auth import key_store
from .settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=None,
                        help="LanceDB location of the key table (default: ATELIER_KEYS_URI or the gallery's)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="make a key for a user and print it (shown once)")
    add.add_argument("user")
    ls = sub.add_parser("list", help="list keys (ids, users, creation times)")
    ls.add_argument("user", nargs="?")
    rv = sub.add_parser("revoke", help="revoke a user's key")
    rv.add_argument("user")
    which = rv.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="the key id `list` shows")
    which.add_argument("--all", action="store_true", help="every key of the user")
    args = parser.parse_args(argv)

    settings = ServiceSettings() if args.uri is None else ServiceSettings(keys_uri=args.uri)
    store = key_store(settings)
    try:
        if args.command == "add":
            key_id, key = store.add(args.user)
            print(key)
            print(f"key id {key_id} for user {args.user!r}: keep the key now, it cannot be shown again",
                  file=sys.stderr)
        elif args.command == "list":
            for row in store.list(args.user):
                print(f"{row['key_id']}  {row['created_at']:%Y-%m-%dT%H:%M:%SZ}  {row['user_id']}")
        else:
            n = store.revoke(args.user, None if args.all else args.key)
            print(f"revoked {n} key{'s' if n != 1 else ''} of user {args.user!r}", file=sys.stderr)
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
