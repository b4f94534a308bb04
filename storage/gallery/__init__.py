"""The gallery: LanceDB tables of image rows, read, searched and written per user.

- `table.py`: one embedding model's table, its writes (idempotent upserts, updates, deletes),
  reads and upkeep (indexes, compaction); `Gallery` composes the rest.
- `search.py`: vector search (the cached user in memory, LanceDB's flat scan or ANN index),
  full text, and their reciprocal-rank fusion.
- `filters.py`: SQL filters (every value a validated id or a quoted literal) and listing cursors.
- The vector cache and its refresh rules: `storage/vector_cache.py`.
"""

from .filters import sql_str
from .search import VECTOR_INDEX
from .table import FTS_INDEX, PRIMARY_KEY, Gallery, table_name

__all__ = ["FTS_INDEX", "PRIMARY_KEY", "VECTOR_INDEX", "Gallery", "sql_str", "table_name"]
