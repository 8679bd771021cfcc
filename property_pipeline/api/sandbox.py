"""A local HTTP server that speaks the property-search API contract, with deterministic data and injectable faults."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import random
import socket
import socketserver
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson

from property_pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

SEARCH_PATH = "/v2/PropertySearch"
DEFAULT_PAGE_SIZE = 400
MAX_REQUEST_BYTES = 1_000_000
MAX_RECORDS = 10_000_000


# ---------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class _City:
    name: str
    county: str
    zip_prefix: str
    latitude: float
    longitude: float
    price_per_sqft: int


@dataclass(frozen=True)
class _State:
    code: str
    name: str
    cities: tuple[_City, ...]


_STATES: tuple[_State, ...] = (
    _State(
        "CA",
        "California",
        (
            _City("Los Angeles", "Los Angeles", "900", 34.0522, -118.2437, 650),
            _City("San Diego", "San Diego", "921", 32.7157, -117.1611, 600),
            _City("Sacramento", "Sacramento", "958", 38.5816, -121.4944, 350),
        ),
    ),
    _State(
        "TX",
        "Texas",
        (
            _City("Austin", "Travis", "787", 30.2672, -97.7431, 320),
            _City("Houston", "Harris", "770", 29.7604, -95.3698, 180),
            _City("San Antonio", "Bexar", "782", 29.4241, -98.4936, 170),
        ),
    ),
    _State(
        "FL",
        "Florida",
        (
            _City("Miami", "Miami-Dade", "331", 25.7617, -80.1918, 450),
            _City("Orlando", "Orange", "328", 28.5383, -81.3792, 250),
            _City("Tampa", "Hillsborough", "336", 27.9506, -82.4572, 260),
        ),
    ),
    _State(
        "NY",
        "New York",
        (
            _City("Brooklyn", "Kings", "112", 40.6782, -73.9442, 800),
            _City("Buffalo", "Erie", "142", 42.8864, -78.8784, 150),
            _City("Rochester", "Monroe", "146", 43.1566, -77.6088, 140),
        ),
    ),
    _State(
        "WA",
        "Washington",
        (
            _City("Seattle", "King", "981", 47.6062, -122.3321, 550),
            _City("Spokane", "Spokane", "992", 47.6588, -117.4260, 230),
            _City("Tacoma", "Pierce", "984", 47.2529, -122.4443, 330),
        ),
    ),
    _State(
        "IL",
        "Illinois",
        (
            _City("Chicago", "Cook", "606", 41.8781, -87.6298, 280),
            _City("Naperville", "DuPage", "605", 41.7508, -88.1535, 240),
            _City("Springfield", "Sangamon", "627", 39.7817, -89.6501, 110),
        ),
    ),
    _State(
        "AZ",
        "Arizona",
        (
            _City("Phoenix", "Maricopa", "850", 33.4484, -112.0740, 270),
            _City("Tucson", "Pima", "857", 32.2226, -110.9747, 210),
            _City("Flagstaff", "Coconino", "860", 35.1983, -111.6513, 330),
        ),
    ),
    _State(
        "CO",
        "Colorado",
        (
            _City("Denver", "Denver", "802", 39.7392, -104.9903, 380),
            _City("Boulder", "Boulder", "803", 40.0150, -105.2705, 550),
            _City("Colorado Springs", "El Paso", "809", 38.8339, -104.8214, 250),
        ),
    ),
)
_OWNERS: tuple[tuple[str, str], ...] = (
    ("José", "Núñez"),
    ("Zoë", "Ångström"),
    ("芳", "王"),
    ("Søren", "Kierkegård"),
    ("François", "Lefèvre"),
    ("Małgorzata", "Wiśniewska"),
    ("Lan", "Nguyễn"),
    ("Ольга", "Иванова"),
    ("Siobhán", "O'Brien"),
    ("Björk", "Guðmundsdóttir"),
    ("Hiroshi", "田中"),
    ("Mary", "Johnson"),
    ("James", "Smith"),
    ("María", "García"),
    ("Robert", "Williams"),
    ("Priya", "Patel"),
    ("David", "Kim"),
    ("Linda", "Brown"),
    ("Ahmed", "Al-Sayed"),
    ("Chloé", "Dubois"),
)
_COMPANIES = (
    "Sunrise Holdings LLC",
    "Blue Oak Property Trust",
    "Pacific Crest Investments LP",
    "Müller & Søn Realty Inc.",
)
_STREETS = (
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Washington Blvd",
    "Lakeview Dr",
    "Sunset Blvd",
    "Park Ave",
    "Hillcrest Rd",
    "River Rd",
    "Calle del Sol",
    "Mission St",
    "Highland Ave",
    "Broadway",
    "2nd St",
    "Willow Way",
)
_PROPERTY_TYPES = ("SFR", "CONDO", "MFR", "LAND", "MOBILE", "OTHER")
_PROPERTY_TYPE_WEIGHTS = (55, 15, 10, 8, 7, 5)
_PROPERTY_USE = {
    "SFR": "Single Family Residence",
    "CONDO": "Condominium",
    "MFR": "Multi-Family (2-4 Units)",
    "LAND": "Vacant Land",
    "MOBILE": "Manufactured Home",
    "OTHER": "Miscellaneous",
}
_LENDERS = (
    "Wells Fargo Bank NA",
    "Rocket Mortgage LLC",
    "JPMorgan Chase Bank NA",
    "United Wholesale Mortgage",
    "Bank of America NA",
    "loanDepot.com LLC",
    "Navy Federal Credit Union",
)
_NEIGHBORHOODS = ("Old Town", "Riverside", "Highland Park", "West End", "Lakeside", "Cherry Creek", "Southgate")
_FLAGS = (
    "vacant",
    "preForeclosure",
    "highEquity",
    "freeAndClear",
    "cashBuyer",
    "inherited",
    "corporateOwned",
    "outOfStateAbsentee",
    "taxLien",
    "auction",
)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
_CONTRACT_VIOLATIONS = ("missing_id", "bedrooms_word", "impossible_date", "fractional_year", "state_name")


def _state_of(index: int, seed: int) -> _State:
    # A cheap hash rather than the record's RNG, so a state filter need not build whole records.
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return _STATES[int.from_bytes(digest, "big") % len(_STATES)]


def _iso_date(rng: random.Random, first_year: int, last_year: int) -> str:
    start, end = date(first_year, 1, 1).toordinal(), date(last_year, 12, 31).toordinal()
    return date.fromordinal(rng.randint(start, end)).isoformat()


def _address(rng: random.Random, state: _State, city: _City, unit: bool) -> dict[str, Any]:
    street = f"{rng.randint(1, 9999)} {rng.choice(_STREETS)}"
    if unit:
        street += f" Unit {rng.randint(1, 40)}{rng.choice('ABCD')}"
    zip_code = f"{city.zip_prefix}{rng.randint(0, 99):02d}"
    return {
        "address": f"{street}, {city.name}, {state.code} {zip_code}",
        "street": street,
        "city": city.name,
        "state": state.code,
        "zip": zip_code,
        "county": city.county,
    }


def _mortgage(rng: random.Random, value: int, position: int) -> dict[str, Any]:
    amount = int(round(value * rng.uniform(0.3, 0.8), -3))
    recorded = _iso_date(rng, 2005, 2024)
    term = rng.choice((15, 30))
    return {
        "position": position,
        "lenderName": rng.choice(_LENDERS),
        "amount": amount,
        "balance": int(amount * rng.uniform(0.2, 0.95)),
        "interestRate": rng.choice((2.75, 3.125, 3.5, 4.25, 5.0, 6.375, 7.125)),
        "interestRateType": rng.choice(("Fixed", "Fixed", "Adjustable")),
        "loanType": rng.choice(("Conventional", "FHA", "VA", "HELOC")),
        "termYears": term,
        "recordingDate": recorded,
        "maturityDate": f"{int(recorded[:4]) + term}{recorded[4:]}" if recorded[5:] != "02-29" else None,
        "documentNumber": f"{recorded[:4]}-{rng.randint(100000, 999999)}",
    }


def generate_record(index: int, seed: int) -> dict[str, Any]:
    """Sandbox record number `index` (about 2 KB of JSON); the same (index, seed) always gives the same record."""
    rng = random.Random(f"property-sandbox:{seed}:{index}")  # noqa: S311 - reproducible test data, not secrets
    state = _state_of(index, seed)
    city = rng.choice(state.cities)
    property_type = rng.choices(_PROPERTY_TYPES, weights=_PROPERTY_TYPE_WEIGHTS)[0]
    is_land = property_type == "LAND"
    address = _address(rng, state, city, unit=property_type == "CONDO")
    absentee = rng.random() < 0.3
    if absentee:
        mail_state = rng.choice(_STATES)
        mail_address = _address(rng, mail_state, rng.choice(mail_state.cities), unit=rng.random() < 0.2)
    else:
        mail_address = dict(address)
    corporate = rng.random() < 0.08
    first_name, last_name = (None, rng.choice(_COMPANIES)) if corporate else rng.choice(_OWNERS)
    second_owner = None if corporate or rng.random() < 0.6 else rng.choice(_OWNERS)

    square_feet = None if is_land else rng.randint(480, 5200)
    lot_square_feet = None if property_type == "CONDO" else rng.randint(1200, 87120)
    basis = square_feet if square_feet is not None else (lot_square_feet or 5000) // 10
    estimated_value = int(round(basis * city.price_per_sqft * rng.uniform(0.75, 1.3), -3))
    mortgages = [_mortgage(rng, estimated_value, position) for position in range(1, rng.choice((0, 1, 1, 2)) + 1)]
    sold = rng.random() < 0.85
    last_sale_date = _iso_date(rng, 1988, 2024) if sold else None
    last_sale_amount = int(round(estimated_value * rng.uniform(0.35, 0.95), -3)) if sold else None
    assessed = int(estimated_value * rng.uniform(0.55, 0.9))
    flags = sorted(rng.sample(_FLAGS, rng.randint(0, 3)))
    if absentee and mail_address["state"] != state.code and "outOfStateAbsentee" not in flags:
        flags.append("outOfStateAbsentee")
    record_id: str | int = 7_000_000 + index if index % 7 == 6 else f"P-{index:06d}-{rng.getrandbits(16):04x}"

    record: dict[str, Any] = {
        "id": record_id,
        "apn": None
        if rng.random() < 0.05
        else f"{rng.randint(100, 999)}-{rng.randint(100, 999)}-{rng.randint(10, 99)}",
        "propertyType": property_type,
        "propertyUse": _PROPERTY_USE[property_type],
        "address": address,
        "latitude": round(city.latitude + rng.uniform(-0.15, 0.15), 6),
        "longitude": round(city.longitude + rng.uniform(-0.15, 0.15), 6),
        "bedrooms": None if is_land else rng.randint(1, 6),
        "bathrooms": None if is_land else rng.choice((1, 1.5, 2, 2, 2.5, 3, 3.5, 4)),
        "squareFeet": square_feet,
        "lotSquareFeet": lot_square_feet,
        "yearBuilt": None if is_land else rng.randint(1905, 2023),
        "stories": None if is_land else rng.choice((1, 1, 2, 2, 3)),
        "estimatedValue": estimated_value,
        "estimatedEquity": estimated_value - sum(mortgage["balance"] for mortgage in mortgages),
        "lastSaleDate": last_sale_date,
        "lastSaleAmount": last_sale_amount,
        "owner1FirstName": first_name,
        "owner1LastName": last_name,
        "owner2FirstName": second_owner[0] if second_owner else None,
        "owner2LastName": second_owner[1] if second_owner else None,
        "ownerOccupied": not absentee,
        "absenteeOwner": absentee,
        "corporateOwned": corporate,
        "mailAddress": mail_address,
        "mortgages": mortgages,
        "taxInfo": {
            "taxYear": 2024,
            "assessedValue": assessed,
            "assessedLandValue": int(assessed * 0.35),
            "assessedImprovementValue": assessed - int(assessed * 0.35),
            "taxAmount": round(assessed * rng.uniform(0.008, 0.021), 2),
            "taxDelinquentYear": rng.choice((2021, 2022, 2023)) if rng.random() < 0.04 else None,
            "exemptions": ["Homeowner"] if not absentee and rng.random() < 0.7 else [],
        },
        "flags": flags,
        "neighborhood": {
            "name": rng.choice(_NEIGHBORHOODS),
            "medianHouseholdIncome": rng.randint(38, 190) * 1000,
            "schoolRating": rng.randint(1, 10),
            "walkScore": rng.randint(5, 99),
            "floodZone": rng.choice(("X", "X", "X", "AE", None)),
        },
        "building": None
        if is_land
        else {
            "construction": rng.choice(("Frame", "Masonry", "Concrete Block", "Steel")),
            "roofType": rng.choice(("Composition Shingle", "Tile", "Metal", "Built-Up")),
            "heating": rng.choice(("Forced Air", "Heat Pump", "Radiant", None)),
            "cooling": rng.choice(("Central", "Evaporative", "None", None)),
            "garageSpaces": rng.choice((0, 1, 2, 2, 3)),
            "pool": rng.random() < 0.15,
        },
        "parcel": {
            "fips": f"{rng.randint(1, 56):02d}{rng.randint(1, 199):03d}",
            "censusTract": f"{rng.randint(1, 9999):04d}.{rng.randint(0, 99):02d}",
            "zoning": rng.choice(("R1", "R2", "R3", "RM", "C1", "A1", "PUD")),
            "landUse": _PROPERTY_USE[property_type],
            "subdivision": f"{rng.choice(_NEIGHBORHOODS)} {rng.choice(('Estates', 'Heights', 'Tract', 'Addition'))}",
        },
        "saleHistory": [
            {
                "saleDate": _iso_date(rng, 1975, 2015),
                "saleAmount": int(round(estimated_value * rng.uniform(0.1, 0.6), -3)),
                "documentType": rng.choice(("Grant Deed", "Warranty Deed", "Quitclaim Deed", "Trustee's Deed")),
                "buyerName": " ".join(rng.choice(_OWNERS)),
                "sellerName": " ".join(rng.choice(_OWNERS)),
            }
            for _ in range(rng.choice((0, 1, 1, 2, 3)))
        ],
        "legalDescription": (
            f"LOT {rng.randint(1, 250)} BLK {rng.randint(1, 60)} {rng.choice(_NEIGHBORHOODS).upper()} "
            f"SUBDIVISION TRACT {rng.randint(1000, 99999)} PER MAP BOOK {rng.randint(10, 400)} "
            f"PAGE {rng.randint(1, 99)} RECORDS OF {city.county.upper()} COUNTY"
        ),
        "lastUpdated": f"{_iso_date(rng, 2024, 2025)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
    }
    if index % 97 == 96:
        _break_contract(record, _CONTRACT_VIOLATIONS[(index // 97) % len(_CONTRACT_VIOLATIONS)], state)
    return record


def _break_contract(record: dict[str, Any], violation: str, state: _State) -> None:
    """Make the record violate the contract in one way, so the pipeline's quarantine has work to do."""
    if violation == "missing_id":
        del record["id"]
    elif violation == "bedrooms_word":
        record["bedrooms"] = _NUMBER_WORDS[record["bedrooms"] or 3]
    elif violation == "impossible_date":
        record["lastSaleDate"] = "2021-13-45"
    elif violation == "fractional_year":
        record["yearBuilt"] = float(record["yearBuilt"] or 1999) + 0.5
    elif violation == "state_name":
        record["address"]["state"] = state.name


# ---------------------------------------------------------------------------
# Pages


class InvalidSearchRequest(PipelineError, ValueError):
    """The request breaks the contract; the sandbox answers 400 with this message."""


@dataclass(frozen=True)
class _PageRequest:
    """A validated search: which dataset, filtered how, and which slice of it."""

    records: int
    state: str | None
    result_index: int
    size: int


def _page_request(criteria: Mapping[str, Any], result_index: Any, size: Any, config: SandboxConfig) -> _PageRequest:
    """Check a request against the contract; InvalidSearchRequest says what is wrong."""
    if type(size) is not int or not 1 <= size <= config.max_page_size:
        raise InvalidSearchRequest(f"size must be an integer from 1 to {config.max_page_size}, got {str(size)[:40]}")
    if type(result_index) is not int or result_index < 0:
        raise InvalidSearchRequest(f"resultIndex must be a non-negative integer, got {str(result_index)[:40]}")
    records = criteria.get("records", config.records)
    if type(records) is not int or not 0 <= records <= MAX_RECORDS:
        raise InvalidSearchRequest(f"records must be an integer from 0 to {MAX_RECORDS}, got {str(records)[:40]}")
    state = criteria.get("state")
    if state is not None and not (isinstance(state, str) and len(state) == 2 and state.isascii() and state.isalpha()):
        raise InvalidSearchRequest(f"state must be a two-letter code such as 'CA', got {str(state)[:40]!r}")
    return _PageRequest(records, state.upper() if state else None, result_index, size)


@lru_cache(maxsize=32)
def _indexes_in_state(records: int, seed: int, state: str) -> tuple[int, ...]:
    return tuple(index for index in range(records) if _state_of(index, seed).code == state)


# Retries ask for the same page again; a few cached pages spare regenerating hundreds of records each time.
@lru_cache(maxsize=8)
def _page_bytes(request: _PageRequest, seed: int) -> bytes:
    matched: Sequence[int] = (
        range(request.records) if request.state is None else _indexes_in_state(request.records, seed, request.state)
    )
    chosen = matched[request.result_index : request.result_index + request.size]
    data = [generate_record(index, seed) for index in chosen]
    return orjson.dumps(
        {
            "statusCode": 200,
            "resultCount": len(matched),
            "resultIndex": request.result_index,
            "recordCount": len(data),
            "data": data,
        }
    )


# ---------------------------------------------------------------------------
# Server


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


@dataclass(frozen=True)
class _Fault:
    kind: str  # "rate_limit", "server_error", "truncate" or "slow"
    status: int = 200
    retry_after: str | None = None


# fail_first cycles through these, so a test sees every kind of transient failure in a fixed order.
_FAIL_FIRST_CYCLE = (_Fault("rate_limit", 429, "1"), _Fault("server_error", 503), _Fault("truncate"))
_ERROR_MESSAGES = {
    404: "Not found; the search endpoint is POST /v2/PropertySearch",
    405: "Method not allowed; use POST",
    429: "Too many requests; slow down",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"statusCode": status, "message": message})


class _SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        super().__init__(address, _SandboxRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds on a machine without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("sandbox connection from %s failed", client_address, exc_info=True)


class _SandboxRequestHandler(BaseHTTPRequestHandler):
    server: _SandboxHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    timeout = 30  # idle keep-alive connections close after this
    server_version = "PropertyApiSandbox/1.0"

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only: headers (and so the API key) are never logged.
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Any method but POST: 405 on the search path, 404 elsewhere."""
        self.server.sandbox._count_request()
        self.close_connection = True  # any request body is left unread
        if urlsplit(self.path).path.rstrip("/") == SEARCH_PATH:
            self._send(405, _error_body(405, _ERROR_MESSAGES[405]), {"Allow": "POST"})
        else:
            self._send(404, _error_body(404, _ERROR_MESSAGES[404]))

    do_PUT = do_PATCH = do_DELETE = do_GET

    def do_POST(self) -> None:
        sandbox = self.server.sandbox
        sandbox._count_request()
        body = self._read_body()
        if body is None:
            return
        if urlsplit(self.path).path.rstrip("/") != SEARCH_PATH:
            self._send(404, _error_body(404, _ERROR_MESSAGES[404]))
            return
        if not sandbox._authorized(self.headers.get("x-api-key")):
            self._send(401, _error_body(401, "Missing or invalid x-api-key header"))
            return
        try:
            criteria = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._send(400, _error_body(400, "Request body must be a JSON object of search criteria"))
            return
        if not isinstance(criteria, dict):
            self._send(400, _error_body(400, "Request body must be a JSON object of search criteria"))
            return
        config = sandbox.config
        try:
            request = _page_request(
                criteria, criteria.get("resultIndex", 0), criteria.get("size", DEFAULT_PAGE_SIZE), config
            )
        except InvalidSearchRequest as exc:
            self._send(400, _error_body(400, str(exc)))
            return

        fault = sandbox._draw_fault(request.result_index)
        if fault is None:
            self._send(200, _page_bytes(request, config.seed))
        elif fault.kind == "slow":
            if not sandbox._stopping.wait(config.faults.slow_seconds):
                self._send(200, _page_bytes(request, config.seed))
        elif fault.kind == "truncate":
            page = _page_bytes(request, config.seed)
            self._send(200, page[: len(page) // 2])
        else:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._send(fault.status, _error_body(fault.status, _ERROR_MESSAGES[fault.status]), headers)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering an unreadable one (and closing the connection)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(411, _error_body(411, "Send the request body with a Content-Length header"))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self.close_connection = True
            self._send(413, _error_body(413, f"Request body must be at most {MAX_REQUEST_BYTES} bytes"))
            return None
        return self.rfile.read(length)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout passed while a slow response was pending).
            self.close_connection = True


class SandboxServer:
    """The sandbox API on a loopback port, served from a daemon thread; use as a context manager."""

    def __init__(self, config: SandboxConfig = SandboxConfig(), host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self._address = (host, port)
        self._httpd: _SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._lock = threading.Lock()
        self._requests_served = 0
        self._fault_rng = random.Random(config.faults.seed)  # noqa: S311 - reproducible faults, not secrets
        self._failures_by_index: dict[int, int] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"SandboxServer(base_url={self._base_url!r}, records={self.config.records})"

    @property
    def base_url(self) -> str:
        """The root URL clients use, e.g. http://127.0.0.1:54321 (known once started)."""
        if self._base_url is None:
            raise RuntimeError("the sandbox has not been started; call start() or use it as a context manager")
        return self._base_url

    @property
    def requests_served(self) -> int:
        """Requests received so far, including those answered with a fault or an error."""
        with self._lock:
            return self._requests_served

    def start(self) -> SandboxServer:
        """Bind the port and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        self._stopping.clear()
        httpd = _SandboxHTTPServer(self._address, self)
        host, port = httpd.server_address[:2]
        self._base_url = f"http://{host}:{port}"
        self._httpd = httpd
        # A short poll interval keeps stop() quick; tests start and stop many servers.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="property-api-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port and any open connections; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)
        thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def page_body(self, criteria: Mapping[str, Any], result_index: int, size: int) -> bytes:
        """The exact bytes of a good response to this request (ValueError when the sandbox would answer 400)."""
        return _page_bytes(_page_request(criteria, result_index, size, self.config), self.config.seed)

    def _count_request(self) -> None:
        with self._lock:
            self._requests_served += 1

    def _authorized(self, presented: str | None) -> bool:
        expected = self.config.api_key
        if expected is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())

    def _draw_fault(self, result_index: int) -> _Fault | None:
        faults = self.config.faults
        with self._lock:
            failed = self._failures_by_index.get(result_index, 0)
            if failed < faults.fail_first:
                self._failures_by_index[result_index] = failed + 1
                return _FAIL_FIRST_CYCLE[failed % len(_FAIL_FIRST_CYCLE)]
            if not (faults.rate_limit or faults.server_error or faults.slow or faults.truncate):
                return None
            draw = self._fault_rng.random()
            if draw < faults.rate_limit:
                return _Fault("rate_limit", 429, self._fault_rng.choice(("0", "1")))
            draw -= faults.rate_limit
            if draw < faults.server_error:
                return _Fault("server_error", self._fault_rng.choice((500, 502, 503, 504)))
            draw -= faults.server_error
            if draw < faults.truncate:
                return _Fault("truncate")
            draw -= faults.truncate
            return _Fault("slow") if draw < faults.slow else None

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def serve_forever(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the sandbox in the foreground until Ctrl-C (for the `sandbox-api` command)."""
    with SandboxServer(config, host, port) as server:
        key_note = " (x-api-key required)" if config.api_key else ""
        print(
            f"Property API sandbox: {config.records} records at POST {server.base_url}{SEARCH_PATH}{key_note}. "
            "Press Ctrl-C to stop.",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("Sandbox stopped.", flush=True)
