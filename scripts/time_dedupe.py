"""Time the dedupe stage of the code corpus alone: read the stdlib and the cached sdists of the pinned
list, then run exact + MinHash near dedupe over them, printing files, MB, decisions and seconds (wall
and CPU).  Usage: python scripts/time_dedupe.py [--cache data/cache/sdists] [--limit N]"""
from __future__ import annotations

import argparse
import itertools
import time
from importlib.resources import files

from quicksilver.data import stdlib_source
from quicksilver.data.dedupe import Deduper, MinHashConfig
from quicksilver.data.pypi import load_packages
from quicksilver.data.sdist import PypiSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="data/cache/sdists")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files")
    args = parser.parse_args()
    packages = load_packages(files("quicksilver.data") / "pypi_packages.toml")
    docs = list(itertools.islice(itertools.chain(stdlib_source(), PypiSource(packages, args.cache, offline=True)),
                                 args.limit))
    size = sum(len(d.text.encode("utf-8", "surrogatepass")) for d in docs)
    wall, cpu = time.perf_counter(), time.process_time()
    deduper = Deduper(MinHashConfig())
    verdicts = [deduper.check(f"{d.source}/{d.path}", d.text) for d in docs]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    exact = sum(1 for v in verdicts if v and v[0] == "exact")
    near = sum(1 for v in verdicts if v and v[0] == "near")
    print(f"{len(docs):,} files, {size / 1e6:,.1f} MB: {exact:,} exact and {near:,} near duplicates; "
          f"{wall:,.1f} s wall, {cpu:,.1f} s CPU ({size / 1e6 / cpu:.2f} MB/s, {len(docs) / cpu:,.0f} files/s per core)")


if __name__ == "__main__":
    main()
