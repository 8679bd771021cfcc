"""The sandbox's deterministic, realistic property records (a few of them breaking the contract on purpose)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date
from typing import Any


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
