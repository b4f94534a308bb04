"""Bulk jobs with Ray Data: `ingest` embeds a user's gallery (folders, zips, s3:// prefixes, staged
uploads) into the gallery, `jobs` keeps their status in the cluster's job ledger and starts their
drivers, `sources` lists and reads files safely, and `config` holds the pipelines' own settings.

Imports storage and the plain model classes of `models`, nothing else of `deployments`.
"""
