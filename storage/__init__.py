"""Where a user's data lives, and the checks it passes on the way in: `intake` (images judged by
their bytes), `blobs` (a local folder or S3), `gallery` (LanceDB rows, search, the vector cache),
`gallery_writer` (the one writer per table, a Ray actor), and `library` (all of it composed for the
product service). Imports nothing from `deployments` or `pipelines`.
"""
