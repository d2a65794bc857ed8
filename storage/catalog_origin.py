"""Where a catalog was built, and the guard that keeps a moved or copied catalog from reading the original's files.

DuckDB resolves relative file paths against the process's working directory, not the database file's folder
(`file_search_path` would help, but it is a per-connection setting that a plain `duckdb.connect` does not get),
and a table function cannot compute its paths from the database's own location. So the views name their files
by absolute path, and the catalog records which file it was built as: the view `catalog_origin` (root, catalog)
returns that one row when the recorded catalog file is one of the databases open in this session, and raises

    catalog of <root> opened at <file>: run gadms catalog refresh --root <new root>

otherwise. Every file-backed view filters on it, so a copy fails in plain DuckDB too, instead of silently
reading the original root. DuckDB records a database's path with symlinks resolved, so opening the original
through a symlink or a relative path still passes. A remote root's views name absolute URLs, so its catalog
may be moved freely and has no guard.
"""
from __future__ import annotations

# Appended to every view over the root's files: true, or the error above.
ORIGIN_GUARD = "EXISTS (SELECT 1 FROM catalog_origin)"

# The database files open in this session (one, in the usual `duckdb.connect(path)`).
_OPENED = "(SELECT string_agg(path, ', ') FROM duckdb_databases() WHERE path IS NOT NULL)"


def sql_string(value: str) -> str:
    """A SQL string literal. Only for file paths in view definitions, which DuckDB cannot take as parameters."""
    return "'" + str(value).replace("'", "''") + "'"


def origin_view_sql(root: str, catalog: str, catalog_in_root: bool, guarded: bool) -> str:
    """The `catalog_origin` view of a catalog built as file `catalog` (as DuckDB names it) for output `root`.

    `catalog_in_root`: the catalog is `<root>/catalog.duckdb`, so a copy's own root is the folder it was opened
    in; otherwise the hint refreshes the recorded root into the catalog file that was opened.
    """
    select = f"SELECT {sql_string(root)} AS root, {sql_string(catalog)} AS catalog"
    if not guarded:
        return f"CREATE OR REPLACE VIEW catalog_origin AS {select}"
    new_root = f"parse_dirpath({_OPENED})" if catalog_in_root else f"{sql_string(root + ' --catalog ')} || {_OPENED}"
    message = (f"{sql_string(f'catalog of {root} opened at ')} || {_OPENED} || "
               f"': run gadms catalog refresh --root ' || {new_root}")
    built_here = f"EXISTS (SELECT 1 FROM duckdb_databases() WHERE path = {sql_string(catalog)})"
    return (f"CREATE OR REPLACE VIEW catalog_origin AS {select} "
            f"WHERE CASE WHEN {built_here} THEN true ELSE error({message}) END")
