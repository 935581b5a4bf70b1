"""Logs on object storage: load + validate the same logs from a local file and from s3://, side by side.

    python benchmarks/s3_load.py [--records 300000] [--repeats 3]

Synthesises `--records` rows with logs_throughput.py's generator (varied text, a few broken rows of
every quarantine kind), writes them as JSONL and Parquet, starts a local S3-compatible server (moto in
server mode, a process on 127.0.0.1), uploads both files and times tasks.logs.load_logs on each file
locally and through s3fs (best of `--repeats`, same process, alternating). The S3 figure includes the
HTTP transfer from a server on the same machine: it is the loader's overhead over local disk, not a
network figure. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from logs_throughput import synthesize  # noqa: E402

from tasks.config import LogsSettings  # noqa: E402
from tasks.logs import load_logs  # noqa: E402


def start_s3(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / "moto.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return server, endpoint
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {(folder / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.2)


def timed(source: str, quarantine: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    result = load_logs([source], LogsSettings(), quarantine=quarantine)
    return time.perf_counter() - start, result.read, result.quarantined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="s3-load-") as tmp:
        folder = Path(tmp)
        jsonl, clean, parquet = folder / "logs.jsonl", folder / "clean.jsonl", folder / "logs.parquet"
        synthesize(jsonl, clean, parquet, args.records, 0.0005, 0)
        server, endpoint = start_s3(folder)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
        try:
            import boto3

            client = boto3.client("s3")
            client.create_bucket(Bucket="logs")
            for path in (jsonl, parquet):
                client.upload_file(str(path), "logs", path.name)
            rows = []
            for kind, path in (("jsonl", jsonl), ("parquet", parquet)):
                best = {"local": float("inf"), "s3": float("inf")}
                counts = {}
                for _ in range(args.repeats):
                    for where, source in (("local", str(path)), ("s3", f"s3://logs/{path.name}")):
                        seconds, read, quarantined = timed(source, folder / f"q-{where}.jsonl")
                        best[where] = min(best[where], seconds)
                        counts[where] = (read, quarantined)
                assert counts["local"] == counts["s3"], counts
                rows.append({"format": kind, "bytes": path.stat().st_size, "rows": counts["s3"][0],
                             "quarantined": counts["s3"][1],
                             "local_s": round(best["local"], 3), "s3_s": round(best["s3"], 3),
                             "local_rows_per_s": round(counts["local"][0] / best["local"]),
                             "s3_rows_per_s": round(counts["s3"][0] / best["s3"]),
                             "s3_over_local_time": round(best["s3"] / best["local"], 2)})
        finally:
            server.terminate()
            server.wait(timeout=10)

    print(f"{'format':8} {'MB':>7} {'rows':>9} {'local rows/s':>13} {'s3 rows/s':>11} {'s3/local time':>14}")
    for row in rows:
        print(f"{row['format']:8} {row['bytes'] / 1e6:7.1f} {row['rows']:9d} {row['local_rows_per_s']:13d} "
              f"{row['s3_rows_per_s']:11d} {row['s3_over_local_time']:14.2f}")
    print(json.dumps({"records": args.records, "repeats": args.repeats, "results": rows}))


if __name__ == "__main__":
    main()
