"""The stats benchmark's other side: DuckDB answering the same questions over the same files.

Reads a JSON list of questions on stdin; prints, per question, the answer's row count, a
checksum of its sums (so the Rust side can check both answered the same question) and the
latency of each run in seconds. Each run fetches the answer as NumPy columns, as the Rust side
gets its rows: the cost of handing the answer over is in both figures. The bench installs
duckdb and numpy with pip when they are missing.
"""
import json
import sys
import time

import duckdb


def sql(files, q):
    where = [f"epoch_ns(window_start) >= {q['from']}", f"epoch_ns(window_start) < {q['to']}"]
    if q["devices"]:
        where.append("device IN (" + ",".join(f"'{d}'" for d in q["devices"]) + ")")
    if q["metrics"]:
        where.append("metric IN (" + ",".join(f"'{m}'" for m in q["metrics"]) + ")")
    bucket, start = q["bucket"], q["from"]
    return f"""
        SELECT device, metric,
               (epoch_ns(window_start) - {start}) // {bucket} * {bucket} + {start} AS bucket,
               sum(count) AS count, min(min) AS min, max(max) AS max, sum(sum) AS sum,
               sum(sum) / sum(count) AS mean,
               arg_min(first, first_ts) AS first, arg_max(last, last_ts) AS last,
               min(first_ts) AS first_ts, max(last_ts) AS last_ts
        FROM read_parquet({files!r}, hive_partitioning = false)
        WHERE {' AND '.join(where)}
        GROUP BY ALL
        ORDER BY device, metric, bucket
    """


def main():
    spec = json.load(sys.stdin)
    con = duckdb.connect()
    out = []
    for q in spec["questions"]:
        query = sql(spec["files"], q)
        times = []
        for _ in range(spec["runs"] + 1):
            t = time.perf_counter()
            columns = con.execute(query).fetchnumpy()
            times.append(time.perf_counter() - t)
        out.append({
            "rows": len(columns["sum"]),
            "checksum": float(columns["sum"].sum()),
            "seconds": times[1:],
        })
    json.dump({"duckdb": duckdb.__version__, "threads": con.execute("SELECT current_setting('threads')").fetchone()[0], "answers": out}, sys.stdout)


main()
