"""Seeded benchmark data: payload files of 400 realistic sandbox records, generated once and cached.

Every file is exactly what the sandbox API would send for that page (the same JSON envelope and
`generate_record` records, about 2 KB each). Records that the sandbox breaks on purpose (every 97th)
are left out, so that every method of a comparison loads the very same rows, and ids never repeat.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from property_pipeline.api.sandbox import generate_record
from property_pipeline.store.layout import PAYLOADS_DIR, PayloadName, month_of

RECORDS_PER_FILE = 400
CAMPAIGN = "bench"
DEFAULT_SEED = 20261101
BASE_TIME = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CACHE_DIR = Path(__file__).parent / "results" / "data"
CAMPAIGN_RESULT_COUNT = 10_000_000  # what every page says the whole search holds
CONTRACT_BREAKING_EVERY = 97  # the sandbox breaks record i when i % 97 == 96


def _valid_index(position: int) -> int:
    """The sandbox index of the `position`-th record the sandbox does not break on purpose."""
    per_block = CONTRACT_BREAKING_EVERY - 1
    return (position // per_block) * CONTRACT_BREAKING_EVERY + position % per_block


# A re-capture of the same campaign a month later (the steady state): its files are named in the next month.
RECAPTURE_OFFSET_DAYS = 30


def file_name(batch: int, offset_days: int = 0) -> str:
    """Name of benchmark file `batch` (1-based): one second apart, so newest-wins order is file order."""
    return PayloadName(CAMPAIGN, batch, BASE_TIME + timedelta(days=offset_days, seconds=batch)).file_name


def page_bytes(batch: int, seed: int, per_file: int = RECORDS_PER_FILE) -> bytes:
    """The bytes of file `batch`: records of sandbox positions (batch-1)*per_file onwards, as one API page.

    The bytes do not depend on how many files the dataset has, so a bigger dataset reuses a smaller one's files.
    """
    first = (batch - 1) * per_file
    data = [generate_record(_valid_index(position), seed) for position in range(first, first + per_file)]
    return orjson.dumps(
        {
            "statusCode": 200,
            "resultCount": CAMPAIGN_RESULT_COUNT,
            "resultIndex": first,
            "recordCount": len(data),
            "data": data,
        }
    )


@dataclass(frozen=True)
class Dataset:
    """A cached set of payload files: `folder/<month>/<name>.json`, `files` files of `per_file` records."""

    folder: Path
    files: int
    per_file: int
    seed: int
    offset_days: int = 0  # RECAPTURE_OFFSET_DAYS for a re-capture (see `recaptured`)

    @property
    def records(self) -> int:
        return self.files * self.per_file

    @property
    def month(self) -> str:
        return month_of(BASE_TIME + timedelta(days=self.offset_days))

    def paths(self) -> Iterator[Path]:
        for batch in range(1, self.files + 1):
            yield self.folder / self.month / file_name(batch, self.offset_days)

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths())

    def as_argument(self) -> dict[str, object]:
        """What a child process needs to find the same files (a list of paths can be too long for argv)."""
        return {
            "folder": str(self.folder),
            "files": self.files,
            "per_file": self.per_file,
            "seed": self.seed,
            "offset_days": self.offset_days,
        }

    @classmethod
    def from_argument(cls, argument: dict[str, object]) -> Dataset:
        return cls(
            Path(str(argument["folder"])),
            int(argument["files"]),  # type: ignore[call-overload]
            int(argument["per_file"]),  # type: ignore[call-overload]
            int(argument["seed"]),  # type: ignore[call-overload]
            int(argument.get("offset_days", 0)),  # type: ignore[call-overload]
        )

    def install(self, logs_dir: Path) -> Path:
        """Put the files into `logs_dir/property_payloads/<month>/` (hard links when possible); returns that folder."""
        target = Path(logs_dir) / PAYLOADS_DIR / self.month
        target.mkdir(parents=True, exist_ok=True)
        for path in self.paths():
            destination = target / path.name
            try:
                os.link(path, destination)
            except OSError:
                shutil.copyfile(path, destination)
        return target


def _write_batch(args: tuple[Path, int, int, int]) -> None:
    folder, batch, seed, per_file = args
    final = folder / file_name(batch)
    if final.exists():
        return
    temporary = final.with_name(f".{final.name}.tmp")
    temporary.write_bytes(page_bytes(batch, seed, per_file))
    os.replace(temporary, final)


def dataset(files: int, *, per_file: int = RECORDS_PER_FILE, seed: int = DEFAULT_SEED, workers: int = 2) -> Dataset:
    """The cached dataset of `files` files (generated on first use, in `workers` processes; about 5,000 records/s)."""
    data = Dataset(CACHE_DIR / f"seed{seed}_per{per_file}_files{files}", files, per_file, seed)
    month_folder = data.folder / data.month
    done_marker = data.folder / ".complete"
    if done_marker.exists():
        return data
    month_folder.mkdir(parents=True, exist_ok=True)
    # Files of a smaller dataset with the same seed are the same files: link them instead of regenerating.
    for other in sorted(CACHE_DIR.glob(f"seed{seed}_per{per_file}_files*")):
        if other != data.folder and (other / ".complete").exists():
            for path in (other / data.month).glob("*.json"):
                target = month_folder / path.name
                if not target.exists() and int(path.name.split("_batch")[1].split("_")[0]) <= files:
                    os.link(path, target)
    jobs = [(month_folder, batch, seed, per_file) for batch in range(1, files + 1)]
    missing = [job for job in jobs if not (month_folder / file_name(job[1])).exists()]
    if missing:
        if workers > 1 and len(missing) > 4:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_batch, missing, chunksize=8))
        else:
            for job in missing:
                _write_batch(job)
    done_marker.touch()
    return data


def recaptured(first: Dataset, *, changed_every: int) -> Dataset:
    """The same campaign captured again a month later: the same ids, file for file, in the same order. Every
    `changed_every`-th record has new values (estimated value and equity, last sale amount); every other
    record is byte-identical to its first capture. `changed_every=0`: nothing changed."""
    data = Dataset(
        first.folder.with_name(f"{first.folder.name}_recapture{changed_every}"),
        first.files,
        first.per_file,
        first.seed,
        RECAPTURE_OFFSET_DAYS,
    )
    done_marker = data.folder / ".complete"
    if done_marker.exists():
        return data
    month_folder = data.folder / data.month
    month_folder.mkdir(parents=True, exist_ok=True)
    for batch, source in enumerate(first.paths(), start=1):
        document = orjson.loads(source.read_bytes())
        # The search itself grew meanwhile: no page is byte-identical to its first capture (that would be a
        # duplicate file, never loaded again), whatever its records.
        document["resultCount"] += 1
        for index, record in enumerate(document["data"]):
            if changed_every and index % changed_every == 0:
                for key in ("estimatedValue", "estimatedEquity", "lastSaleAmount"):
                    if isinstance(record.get(key), int):
                        record[key] += 1_000
                record["estimatedValue"] = (record.get("estimatedValue") or 0) + 1  # changed even where it was null
        final = month_folder / file_name(batch, RECAPTURE_OFFSET_DAYS)
        temporary = final.with_name(f".{final.name}.tmp")
        temporary.write_bytes(orjson.dumps(document))
        os.replace(temporary, final)
    done_marker.touch()
    return data


def small_files(folder: Path, count: int, *, first_batch: int, campaign: str = "history") -> list[Path]:
    """`count` one-record payload files (registered history for the sensor-tick benchmark)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for batch in range(first_batch, first_batch + count):
        name = PayloadName(campaign, batch, BASE_TIME + timedelta(microseconds=batch)).file_name
        body = orjson.dumps(
            {"statusCode": 200, "resultCount": 1, "resultIndex": 0, "recordCount": 1, "data": [{"id": f"h-{batch}"}]}
        )
        path = folder / name
        path.write_bytes(body)
        paths.append(path)
    return paths
