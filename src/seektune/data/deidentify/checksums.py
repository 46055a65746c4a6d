"""Check digits the detectors validate and the pseudonyms must satisfy (GB 11643 resident IDs, Luhn).

A number that only looks like an ID or a card (a wrong check digit, an impossible birth date) is not
personal data, so validation is what keeps precision high on long digit runs.
"""

from __future__ import annotations

import datetime as _dt

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# first two digits of a resident ID: provinces, plus 71 Taiwan, 81/82 Hong Kong/Macao, 83 Taiwan residents
PROVINCE_CODES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                            50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83})


def id_check_char(first17: str) -> str:
    """The 18th character of a resident ID from its first 17 digits (ISO 7064 MOD 11-2)."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS)) % 11]


def _valid_date(y: int, m: int, d: int, today: _dt.date | None = None) -> bool:
    try:
        day = _dt.date(y, m, d)
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= day <= (today or _dt.date.today())


def looks_like_resident_id(s: str) -> bool:
    """A known province and a real birth date where an 18-character ID has them (the check may be wrong)."""
    return len(s) == 18 and s[:14].isdigit() and int(s[:2]) in PROVINCE_CODES and \
        _valid_date(int(s[6:10]), int(s[10:12]), int(s[12:14]))


def valid_resident_id(s: str, today: _dt.date | None = None) -> bool:
    """18 characters, a known province, a real birth date not in the future, and the right check character."""
    s = s.upper()
    if len(s) != 18 or not s[:17].isdigit() or not (s[17].isdigit() or s[17] == "X"):
        return False
    if int(s[:2]) not in PROVINCE_CODES or not _valid_date(int(s[6:10]), int(s[10:12]), int(s[12:14]), today):
        return False
    return id_check_char(s[:17]) == s[17]


def valid_legacy_id(s: str) -> bool:
    """A 15-digit ID (issued before 1999): province, then a 19yymmdd birth date; it has no check digit."""
    if len(s) != 15 or not s.isdigit() or int(s[:2]) not in PROVINCE_CODES:
        return False
    return _valid_date(1900 + int(s[6:8]), int(s[8:10]), int(s[10:12]))


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of digits."""
    if not digits.isdigit():
        return False
    total = 0
    for i, c in enumerate(reversed(digits)):
        n = int(c)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that makes payload + digit Luhn-valid."""
    return next(str(d) for d in range(10) if luhn_valid(payload + str(d)))
