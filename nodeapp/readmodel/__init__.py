"""The read side (DESIGN "The read side"): a local SQLite projection of the ``orders`` bucket.

Each api process keeps its own file (``ORDERFLOW_READ_DB``). The projector follows the bucket's
stream ``KV_orders`` from a checkpoint stored in the same transaction as the rows, so a restart
neither loses nor double-counts; list and stats queries read that file, never the broker.

- ``schema``: tables, indexes, connections, the checkpoint and the stored time format;
- ``changes``: one stream message -> one row change, and a batch applied with its checkpoint;
- ``projector``: the task following the stream, its lag, ``rebuild``;
- ``params`` and ``queries``: ``GET /orders``'s parameters, keyset cursor and page;
- ``stats``: ``GET /stats``; ``probe``: Prometheus series; ``service``: what an api opens.
"""
