"""The gallery: LanceDB tables of image rows, read, searched and written per user.

- `table.py`: one embedding model's table, its writes (idempotent upserts, updates, deletes)
  and reads; `Gallery` composes the rest.
- `upkeep.py`: the table's indexes, compaction and purges (`Gallery.upkeep`); `purge.py` schedules
  the purges a delete owes.
- `commits.py`: the per-table write lock and commit-conflict retries both of them commit through.
- `search.py`: vector search (the cached user in memory, LanceDB's flat scan or ANN index),
  full text, and their reciprocal-rank fusion.
- `filters.py`: SQL filters (every value a validated id or a quoted literal) and listing cursors.
- The vector cache and its refresh rules: `storage/vector_cache.py`.
"""

from storage.schema import PRIMARY_KEY

from .filters import sql_str
from .search import VECTOR_INDEX
from .table import Gallery, table_name
from .upkeep import FTS_INDEX

__all__ = ["FTS_INDEX", "PRIMARY_KEY", "VECTOR_INDEX", "Gallery", "sql_str", "table_name"]
