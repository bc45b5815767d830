"""The cassfs cache daemon: whole files and their metadata from Cassandra, kept in diskcache.

Layers, top to bottom (one module each):

- ``server``   unix socket (0600) in the cache dir, msgpack framing (``protocol``)
- ``service``  the RPC methods, one per filesystem operation
- ``cache``    diskcache: metadata entries with a TTL, content keyed by its SHA-256
- ``store``    Cassandra: prepared statements, one method per CQL statement
"""
