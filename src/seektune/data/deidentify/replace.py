"""What a detection becomes: a type tag (`<PHONE>`) or a consistent, format-preserving pseudonym.

Pseudonyms are derived, not stored: HMAC-SHA256(key from the seed, type + normalised value) seeds a
generator, so the same value gets the same fake in every record, every file and every worker, with
no table in memory. Fakes keep the shape that downstream text relies on: an ID with a valid check
character and birth date, a mobile with a real prefix, a Luhn-valid card of the same length, the
original separators. The fakes are built from lists in lexicon.py, never from the input.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import hmac
import random
import re
import string

from . import lexicon as L
from .checksums import id_check_char, luhn_check_digit


def tag(etype: str) -> str:
    return f"<{etype}>"


def _normalise(etype: str, value: str) -> str:
    """The key a value is remembered by: 138-1234-5678 and 13812345678 are one person."""
    if etype in ("PHONE", "BANK_CARD", "ID_CARD"):
        d = re.sub(r"[^0-9Xx]", "", value).upper()
        if etype == "PHONE" and len(d) == 13 and d.startswith("86"):
            d = d[2:]
        return d
    if etype == "EMAIL":
        return value.lower()
    return re.sub(r"\s+", "", value)


def _fill_digits(template: str, digits: str) -> str:
    """Write `digits` into the digit positions of template, keeping every other character."""
    it = iter(digits)
    return "".join(next(it) if c.isdigit() else c for c in template)


def _rand_digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _fake_id(rng, value):
    if len(value) == 15:
        born = _dt.date(1930, 1, 1) + _dt.timedelta(days=rng.randrange(69 * 365))
        return rng.choice(L.FAKE_ID_REGIONS) + born.strftime("%y%m%d") + _rand_digits(rng, 3)
    born = _dt.date(1950, 1, 1) + _dt.timedelta(days=rng.randrange(55 * 365))
    first17 = rng.choice(L.FAKE_ID_REGIONS) + born.strftime("%Y%m%d") + _rand_digits(rng, 3)
    return first17 + id_check_char(first17)


def _fake_phone(rng, value):
    digits = re.sub(r"\D", "", value)
    lead = ""
    if value.lstrip("(").startswith(("+86", "0086", "86")) and len(digits) > 11:
        lead, digits = digits[:-11], digits[-11:]
    if len(digits) == 11 and digits[0] == "1":                      # mainland mobile
        new = rng.choice(L.FAKE_MOBILE_PREFIXES) + _rand_digits(rng, 8)
    elif digits.startswith("0") and not value.lstrip().startswith("+"):  # landline: area code + number
        area_len = 3 if digits[1] in "12" else 4
        area = rng.choice(L.FAKE_AREA_CODES[area_len])
        rest = len(digits) - area_len
        new = area + str(rng.randint(2, 8)) + _rand_digits(rng, rest - 1)
    else:                                                            # international: keep +country
        keep = 1 if value.lstrip().startswith("+1") else 2 if value.lstrip().startswith("+") else 0
        new = digits[:keep] + str(rng.randint(2, 9)) + _rand_digits(rng, len(digits) - keep - 1)
    return _fill_digits(value, lead + new)


def _fake_card(rng, value):
    digits = re.sub(r"\D", "", value)
    payload = digits[0] + _rand_digits(rng, len(digits) - 2)
    return _fill_digits(value, payload + luhn_check_digit(payload))


def _fake_email(rng, value):
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 9))) + "@example.com"


def _fake_person(rng, value):
    if re.search(r"[A-Za-z]", value):
        parts = value.split()
        names = [rng.choice(L.FAKE_EN_FIRST) for _ in parts[:-1]] + [rng.choice(L.FAKE_EN_LAST)]
        return " ".join(names)
    n = max(1, len(value))
    return rng.choice(L.FAKE_SURNAMES) + "".join(rng.choice(L.FAKE_GIVEN) for _ in range(n - 1))


def _fake_address(rng, value):
    out = rng.choice(L.FAKE_CITIES) + rng.choice(L.FAKE_DISTRICTS)
    if re.search(r"路|街|道|巷|弄|号|村|小区|室", value):
        out += rng.choice(L.FAKE_ROADS) + f"{rng.randint(1, 299)}号"
    if re.search(r"室|单元|栋|幢", value):
        out += f"{rng.randint(1, 30)}栋{rng.randint(1, 6)}0{rng.randint(1, 4)}室"
    return out


_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December")


def _fake_dob(rng, value):
    """The same layout with another date: 1985年03月12日 -> 1962年07月04日, March 3, 1985 -> June 9, 1970."""
    born = _dt.date(1940, 1, 1) + _dt.timedelta(days=rng.randrange(70 * 365))
    word = re.search(r"[A-Za-z]{3,}", value)
    if word:
        month = _MONTH_NAMES[born.month - 1]
        value = value.replace(word.group(0), month[:3] if len(word.group(0)) == 3 else month, 1)
        parts = iter([born.day, born.year])
    else:
        first = re.search(r"\d+", value)
        ymd = first is not None and len(first.group(0)) == 4
        parts = iter([born.year, born.month, born.day] if ymd else [born.month, born.day, born.year])

    def sub(m):
        n = next(parts, None)
        if n is None:
            return m.group(0)
        return f"{n:02d}" if len(m.group(0)) == 2 and n < 100 else str(n)

    return re.sub(r"\d+", sub, value)


def _fake_mrn(rng, value):
    return "".join(rng.choice(string.digits) if c.isdigit() else
                   rng.choice(string.ascii_uppercase if c.isupper() else string.ascii_lowercase) if c.isalpha()
                   else c for c in value)


_FAKERS = {"ID_CARD": _fake_id, "PHONE": _fake_phone, "BANK_CARD": _fake_card, "EMAIL": _fake_email,
           "PERSON": _fake_person, "ADDRESS": _fake_address, "DATE_OF_BIRTH": _fake_dob, "MRN": _fake_mrn}


class Replacer:
    """`replacer(type, value)` -> the replacement for one detection."""

    def __init__(self, mode: str = "tag", seed: int = 0):
        self.mode = mode
        self.key = hashlib.sha256(f"seektune-deidentify:{seed}".encode()).digest()
        self.pseudonym = functools.lru_cache(maxsize=1 << 16)(self._pseudonym)

    def __call__(self, etype: str, value: str) -> str:
        return tag(etype) if self.mode == "tag" else self.pseudonym(etype, value)

    def _pseudonym(self, etype: str, value: str) -> str:
        norm = _normalise(etype, value)
        digest = hmac.new(self.key, f"{etype}\0{norm}".encode(), hashlib.sha256).digest()
        rng = random.Random(int.from_bytes(digest[:16], "big"))
        for _ in range(8):  # a fake equal to the value would leak it
            fake = _FAKERS[etype](rng, value)
            if _normalise(etype, fake) != norm:
                return fake
        return tag(etype)
