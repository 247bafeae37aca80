"""make bench-staging: the runner's S3 staging against the raw minio client, same server, same run.

Two data sets on a Ceph RGW started for the benchmark (tests/s3.py): SIZE in 1,000 files and
one file of SIZE. Each is downloaded (as to DATA_DIR) and uploaded (as from RESULT_DIR) by
dlaas.transfer_s3 (what the runner uses: parallel ranged GETs, multipart uploads, every file
verified) and by the raw minio client with the same parallelism (the same ranged GETs and
parallel parts, nothing verified), alternately, best of REPEAT.

SIZE is the issue's 1 GB by default (BENCH_STAGING_MB=1024): about 2 minutes on the 2-core
sandbox, up to about 8 GiB of temporary files; RGW's in-memory store (memstore) is capped at
6 x SIZE and holds the inputs and one attempt's uploads (their parts are garbage-collected
after each attempt), its OSD process peaking at about 10 GB of RSS. BENCH_STAGING_MB=256 is a
lighter run.

Figures (last line):
- download_ratio, upload_ratio: raw minio seconds / our seconds, both data sets together
  (1.0 = as fast as the raw client; the goal is >= 0.9);
- local_staging_ms_per_gb: staging from the platform's local store (hard links) per GB, for
  the 1,000-file set at SIZE; local_staging_growth: its time at 4 x SIZE over its time at SIZE
  (about 1 when staging does not grow with bytes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from minio import Minio

from dlaas import transfer_s3
from dlaas.runner import staging
from tests.s3 import REGION, start_rgw

MIB = 1 << 20


def make_tree(root: Path, files: int, total: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    each = total // files
    block = os.urandom(min(each, 4 * MIB))
    for index in range(files):
        path = root / f"part-{index // 100:02d}" / f"f{index:05d}.bin"
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as out:
            left = each
            while left:
                out.write(block[: min(left, len(block))])
                left -= min(left, len(block))


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def raw_download(s3: Minio, bucket: str, prefix: str, dest: Path, workers: int) -> None:
    """What a plain client does with the same parallelism: ranged GETs of PART_SIZE, no checks."""
    objects = [(o.object_name or "", o.size or 0) for o in s3.list_objects(bucket, prefix=prefix, recursive=True)]
    jobs: list[tuple[str, Path, int, int]] = []
    for key, size in objects:
        path = dest / key[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as created:
            created.truncate(size)
        jobs += [
            (key, path, offset, min(transfer_s3.PART_SIZE, size - offset))
            for offset in range(0, size, transfer_s3.PART_SIZE)
        ]

    def fetch(job: tuple[str, Path, int, int]) -> None:
        key, path, offset, length = job
        response = s3.get_object(bucket, key, offset=offset, length=length)
        fd = os.open(path, os.O_WRONLY)
        try:
            position = offset
            for data in response.stream(MIB):
                os.pwrite(fd, data, position)
                position += len(data)
        finally:
            os.close(fd)
            response.close()
            response.release_conn()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, jobs))


def raw_upload(s3: Minio, bucket: str, prefix: str, src: Path, workers: int) -> None:
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    small = [p for p in files if p.stat().st_size <= transfer_s3.PART_SIZE]
    big = [p for p in files if p.stat().st_size > transfer_s3.PART_SIZE]

    def put(path: Path, parallel: int) -> None:
        s3.fput_object(
            bucket,
            prefix + path.relative_to(src).as_posix(),
            str(path),
            part_size=transfer_s3.PART_SIZE,
            num_parallel_uploads=parallel,
        )

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: put(p, 1), small))
    for path in big:
        put(path, workers)


def clear(s3: Minio, bucket: str, prefix: str) -> None:
    from minio.deleteobjects import DeleteObject

    doomed = [DeleteObject(o.object_name or "") for o in s3.list_objects(bucket, prefix=prefix, recursive=True)]
    for error in s3.remove_objects(bucket, doomed):
        raise RuntimeError(str(error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_STAGING_MB", "1024")))
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=transfer_s3.DEFAULT_WORKERS)
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_STAGING_REPEAT", "3")))
    args = parser.parse_args()
    total = args.mb * MIB
    os.environ.setdefault("DLAAS_RGW_MEMSTORE_BYTES", str(max(4 << 30, 6 * total)))
    server = start_rgw()
    work = Path(tempfile.mkdtemp(prefix="dlaas-bench-staging-"))
    try:
        user = server.create_user("bench")
        s3 = Minio(server.endpoint, user.access_key, user.secret_key, secure=False, region=REGION)
        bucket = "bench"
        s3.make_bucket(bucket)
        sets = {"many": work / "src-many", "one": work / "src-one"}
        make_tree(sets["many"], args.files, total)
        make_tree(sets["one"], 1, total)
        location = transfer_s3.S3Location(server.url, REGION, bucket, "", user.access_key, user.secret_key)
        for name, src in sets.items():
            transfer_s3.upload_tree(src, location, f"in/{name}", workers=args.workers)
        os.sync()  # the data sets' writeback done before anything is timed

        ours: dict[str, float] = {"down": 0.0, "up": 0.0}
        raw: dict[str, float] = {"down": 0.0, "up": 0.0}
        for name, src in sets.items():
            best: dict[str, list[float]] = {"ours_down": [], "raw_down": [], "ours_up": [], "raw_up": []}
            for attempt in range(args.repeat):
                dest = work / f"dl-{name}-{attempt}"
                loc = transfer_s3.S3Location(server.url, REGION, bucket, f"in/{name}", user.access_key, user.secret_key)
                runs: dict[str, Callable[[], object]] = {
                    "ours_down": lambda: transfer_s3.download_prefix(loc, dest / "ours", workers=args.workers),  # noqa: B023
                    "raw_down": lambda: raw_download(s3, bucket, f"in/{name}/", dest / "raw", args.workers),  # noqa: B023
                    "ours_up": lambda: transfer_s3.upload_tree(src, location, f"out/ours-{name}", workers=args.workers),  # noqa: B023
                    "raw_up": lambda: raw_upload(s3, bucket, f"out/raw-{name}/", src, args.workers),  # noqa: B023
                }
                # Who goes first alternates, so that neither always follows the last attempt's
                # uploads and deletions (the store and the disk may still be busy with them).
                first, second = ("ours", "raw") if attempt % 2 == 0 else ("raw", "ours")
                for direction in ("down", "up"):
                    for who in (first, second):
                        best[f"{who}_{direction}"].append(timed(runs[f"{who}_{direction}"]))
                    if direction == "down":
                        shutil.rmtree(dest)
                clear(s3, bucket, "out/")
                # Deleted multipart objects' parts wait for RGW's garbage collector (hours by
                # default) and would fill the in-memory store: collect them now.
                server.radosgw_admin("gc", "process", "--include-all")
            for key, values in best.items():
                print(f"{name:>4} {key:<9} best {min(values):7.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
            ours["down"] += min(best["ours_down"])
            raw["down"] += min(best["raw_down"])
            ours["up"] += min(best["ours_up"])
            raw["up"] += min(best["raw_up"])

        local = local_staging(work, args.files, total)
        gb = total / (1 << 30)
        print(
            f"size={args.mb}MiB files={args.files} workers={args.workers} "
            f"ours_down_s={ours['down']:.2f} raw_down_s={raw['down']:.2f} "
            f"ours_up_s={ours['up']:.2f} raw_up_s={raw['up']:.2f} "
            f"local_staging_s={local[0]:.3f} local_staging_4x_s={local[1]:.3f}"
        )
        print(
            f"download_ratio={raw['down'] / ours['down']:.2f} upload_ratio={raw['up'] / ours['up']:.2f} "
            f"local_staging_ms_per_gb={local[0] * 1000 / gb:.0f} local_staging_growth={local[1] / local[0]:.2f}"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def local_staging(work: Path, files: int, total: int) -> tuple[float, float]:
    """Seconds to stage the same file count from the local store at SIZE and at 4 x SIZE."""
    results: list[float] = []
    for scale in (1, 4):
        store = work / f"local-{scale}"
        make_tree(store, files, total * scale)
        runs = []
        for attempt in range(3):
            dest = work / f"staged-{scale}-{attempt}"
            runs.append(timed(lambda: staging.stage_data(store, dest)))  # noqa: B023
            shutil.rmtree(dest)
        results.append(min(runs))
        shutil.rmtree(store)
    return results[0], results[1]


if __name__ == "__main__":
    main()
