"""API keys of the running service, live: every proxy and replica reads the same key table.

    python -m deployments.keys add USER                # prints a new key, once
    python -m deployments.keys list [USER]             # key ids, users, creation times
    python -m deployments.keys revoke USER --key ID    # one key; `--all` for every key of USER
    python -m deployments.keys plan USER [PLAN]        # show or set the user's plan (`default`: none of its own)

The table is `api_keys` in the gallery's LanceDB (ATELIER_KEYS_URI, else ATELIER_LANCEDB_URI, else
data/lancedb: run it from the checkout the service runs from, or set the variable). It keeps sha256
digests only. A change counts from the next request on every node; no restart.

Plans (README "Plans and limits") are defined in the Ingress's live settings; `plan` puts a user on one,
from the user's next request on every node. `--config serve_config.yaml` checks the name against that file.

Rotation: `add` a second key for the user, move the client to it, then `revoke` the old one by the id
`list` shows. Both keys work in between.
"""

from __future__ import annotations

import argparse
import sys

from storage.errors import AtelierError

from .config import LIVE_SETTINGS
from .http.auth import key_store, plan_store
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
    pl = sub.add_parser("plan", help="show a user's plan, or put the user on one")
    pl.add_argument("user")
    pl.add_argument("plan", nargs="?")
    pl.add_argument("--config", default=None, help="a serve config whose Ingress plans must define PLAN")
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
        elif args.command == "plan":
            plans = plan_store(settings)
            if args.plan is None:
                print(plans.list().get(args.user, "default"))
                return 0
            if args.config and args.plan not in _plans_of(args.config):
                print(f"error: {args.config} defines no plan {args.plan!r} (it has: "
                      f"{', '.join(sorted(_plans_of(args.config)))})", file=sys.stderr)
                return 2
            plans.assign(args.user, args.plan)
            print(f"user {args.user!r} is on plan {args.plan!r} from their next request", file=sys.stderr)
        else:
            n = store.revoke(args.user, None if args.all else args.key)
            print(f"revoked {n} key{'s' if n != 1 else ''} of user {args.user!r}", file=sys.stderr)
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _plans_of(path: str) -> set[str]:
    """The plan names the Ingress's user_config of a serve config file defines."""
    import yaml

    doc = yaml.safe_load(open(path))
    names = set()
    for app in doc.get("applications") or []:
        for dep in app.get("deployments") or []:
            if dep.get("name") == "Ingress":
                names |= set(LIVE_SETTINGS["Ingress"].model_validate(dep.get("user_config") or {}).plans)
    return names or {"default"}


if __name__ == "__main__":
    raise SystemExit(main())
