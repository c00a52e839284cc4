"""Connections to the feature database: writers change a working copy, readers open a published snapshot.

DuckDB lets one process write a file and, while it does, refuses every other process, readers included. So the
atlas keeps two kinds of file (paths: storage.layout):

- The working copy `$ATLAS_HOME/atlas.duckdb`. Only `working_copy.writer()` opens it, one process at a time: it first
  takes the writer lock (`writer_lock`), then opens the file, migrates it (`migrations`) and yields the connection.
- Published snapshots `$ATLAS_HOME/snapshots/atlas-<n>.duckdb`. When a writer finishes, `publishing` (still under
  the writer lock) checkpoints the working copy, copies it to the next snapshot and swaps the link
  `snapshots/atlas-current.duckdb` to it atomically (storage.snapshots). `readers.reader()` and `readers.query()`
  open the current snapshot read-only and never touch the working copy, so no reader ever waits for a writer,
  however long its transaction. The current and the previous snapshot are kept; a reader that loses a race with
  a swap retries on the new link.

One module per concept:

- `errors`: the exceptions every failure to open, publish or use the database raises (`AtlasDatabaseError`).
- `env`: the environment variables that tune it (lock timeout, writer threads, snapshots kept).
- `crash_points`: the testing hook that kills a writer at a named point of a write unit.
- `writer_lock`: the writer lock (an `flock`) and opening the working copy past DuckDB's own file lock.
- `read_only`: read-only DuckDB instances of a snapshot (private links, sandbox, settings).
- `publishing`: working copy -> snapshot, then the sweep of files no kept database references.
- `legacy`: reading a database written before snapshots existed.
- `readers`: the read API (`reader`, `query`, `frame`, `published_path`).
- `migrations`: bringing a database to the schema version of this code.
- `working_copy`: the write API (`writer`, `transaction`).
- `row_writes`: replacing a table's rows from polars frames (`write`, `write_many`, `replace_rows`).
"""
