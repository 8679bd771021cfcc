"""What a sandbox serves, and how it misbehaves on purpose."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_RECORDS = 10_000_000


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities of misbehaviour per request, plus a deterministic `fail_first` per resultIndex."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    truncate: float = 0.0
    fail_first: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        chances = (self.rate_limit, self.server_error, self.slow, self.truncate)
        if any(not 0.0 <= chance <= 1.0 for chance in chances) or sum(chances) > 1.0:
            raise ValueError("fault probabilities must each be in [0, 1] and add up to at most 1")
        if self.slow_seconds < 0 or self.fail_first < 0:
            raise ValueError("slow_seconds and fail_first must not be negative")


@dataclass(frozen=True)
class SandboxConfig:
    """What the sandbox serves: how many records, from which seed, behind which key, with which faults."""

    records: int = 3000
    seed: int = 42
    api_key: str | None = field(default=None, repr=False)
    faults: FaultConfig = field(default_factory=FaultConfig)
    max_page_size: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.records <= MAX_RECORDS:
            raise ValueError(f"records must be from 0 to {MAX_RECORDS}")
        if self.max_page_size < 1:
            raise ValueError("max_page_size must be at least 1")
