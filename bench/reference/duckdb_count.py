"""The same count in DuckDB, for a same-file comparison: python duckdb_count.py FILE.jsonl OUT.csv"""
import sys

import duckdb

source, output = sys.argv[1], sys.argv[2]
duckdb.sql(
    f"""
    COPY (
        SELECT ProducerID,
               count(*) FILTER (WHERE Inferred IS NOT NULL AND Inferred <> GroundTruth) AS total_errors
        FROM read_json_auto('{source}', format = 'newline_delimited')
        GROUP BY ProducerID ORDER BY ProducerID
    ) TO '{output}' (HEADER)
    """
)
