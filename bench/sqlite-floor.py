#!/usr/bin/env python3
"""What SQLite alone costs per decision with Warden's schema: the floor under `warden serve`.

Inserts N decisions (an audit event row and a decision row each, shaped like the load
benchmark's) in batches of B, one transaction per batch, through Python's built-in sqlite3
module into a fresh file with migrations/sqlite/0001_init.sql. No HTTP, no hashing, no
policy: only the database's work. Prints microseconds and bytes written per decision.

    python3 bench/sqlite-floor.py [--batch 16] [--keys uuid|seq] [--sync off|full]
                                  [--layout two|one] [-n 20000]

--keys     idempotency keys: random UUIDs (what clients send) or sequential strings
--sync     PRAGMA synchronous: off (CPU and writes only) or full (one fsync per commit)
--layout   two: the schema as it is (event row + decision row);
           one: the decision body and key as extra event columns (no decision row),
           to measure what folding the two rows into one would save

Python's per-row overhead is included, so the figures are an upper bound on SQLite's own
work; the bytes written (from /proc/self/io) include the WAL and the checkpoints.
"""

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def written_bytes():
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--keys", choices=["uuid", "seq"], default="uuid")
    parser.add_argument("--sync", choices=["off", "full"], default="off")
    parser.add_argument("--layout", choices=["two", "one"], default="two")
    parser.add_argument("-n", type=int, default=20000)
    args = parser.parse_args()

    with open(os.path.join(ROOT, "migrations", "sqlite", "0001_init.sql")) as f:
        schema = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "floor.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={args.sync.upper()}")
        db.execute("PRAGMA cache_size=-16384")
        db.executescript(schema)
        if args.layout == "one":
            db.executescript(
                "ALTER TABLE audit_events ADD COLUMN idempotency_key TEXT;"
                "ALTER TABLE audit_events ADD COLUMN body TEXT;"
                "CREATE UNIQUE INDEX audit_events_idempotency"
                " ON audit_events (tenant, idempotency_key)"
                " WHERE idempotency_key IS NOT NULL;"
            )
        # Sizes as in the load benchmark: a ~550-byte decision body, 64-hex hashes/digests.
        body = (
            '{"decision_id":"01KXXXXXXXXXXXXXXXXXXXXXXX","effect":"allow","reasons":'
            '[{"rule":"support-may-act","message":"support agents may act on tickets"}],'
            '"obligations":{"mode":"draft"},"x":"' + "y" * 350 + '"}'
        )
        digest = hashlib.sha256(b"x").hexdigest()
        seq = 0
        before = written_bytes()
        started = time.perf_counter()
        for _ in range(args.n // args.batch):
            db.execute("BEGIN IMMEDIATE")
            events, decisions = [], []
            for _ in range(args.batch):
                seq += 1
                event_id = "01K%023d" % seq
                key = str(uuid.uuid4()) if args.keys == "uuid" else "key-%012d" % seq
                row = (seq, event_id, 1_700_000_000_000 + seq, "default", "decision",
                       "support-bot", None, "ticket.resolve", "ticket", "T-%d" % seq,
                       "draft", 0.91, 0.91, "allow", '["support-may-act"]',
                       '["support agents may act on tickets"]', "1.0.0", digest, digest,
                       '{"ticket":{"priority":"p2"}}', event_id,
                       '{"obligations":{"mode":"draft"}}', digest, digest)
                if args.layout == "one":
                    row += (key, body)
                events.append(row)
                decisions.append((event_id, "default", key, body, 1_700_000_000_000 + seq))
            marks = ",".join("?" * len(events[0]))
            db.executemany(f"INSERT INTO audit_events VALUES ({marks})", events)
            if args.layout == "two":
                db.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?)", decisions)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        written = written_bytes() - before
        db.close()
    print(
        f"layout={args.layout} keys={args.keys} sync={args.sync} batch={args.batch} "
        f"n={seq}: {elapsed / seq * 1e6:.1f} µs and {written / seq / 1024:.1f} KiB written "
        f"per decision (SQLite {sqlite3.sqlite_version})"
    )


if __name__ == "__main__":
    main()
