"""UCI Statlog German credit (`german.data`) rendered as text for a text classifier.

Each of the 20 attributes becomes a phrase from the UCI codebook (`german.doc`): coded values
(A11 ... A202) are replaced by their documented meaning and numeric ones get their unit, so a
language model reads "checking account balance below 0 DM" instead of "A11". The last column
(1 = good, 2 = bad risk) becomes the label `good` / `bad`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .io import DataError, _text_lines, detect_encoding

CODES: dict[str, str] = {
    # 1 status of existing checking account
    "A11": "checking account balance below 0 DM",
    "A12": "checking account balance between 0 and 200 DM",
    "A13": "checking account balance of at least 200 DM or salary assigned for at least 1 year",
    "A14": "no checking account",
    # 3 credit history
    "A30": "no credits taken or all credits paid back duly",
    "A31": "all credits at this bank paid back duly",
    "A32": "existing credits paid back duly till now",
    "A33": "delay in paying off in the past",
    "A34": "critical account or other credits existing (not at this bank)",
    # 4 purpose
    "A40": "a new car", "A41": "a used car", "A42": "furniture or equipment", "A43": "a radio or television",
    "A44": "domestic appliances", "A45": "repairs", "A46": "education", "A47": "vacation",
    "A48": "retraining", "A49": "business", "A410": "other purposes",
    # 6 savings account / bonds
    "A61": "savings below 100 DM", "A62": "savings between 100 and 500 DM",
    "A63": "savings between 500 and 1000 DM", "A64": "savings of at least 1000 DM",
    "A65": "unknown or no savings account",
    # 7 present employment since
    "A71": "unemployed", "A72": "employed for less than 1 year", "A73": "employed for 1 to 4 years",
    "A74": "employed for 4 to 7 years", "A75": "employed for at least 7 years",
    # 9 personal status and sex
    "A91": "male, divorced or separated", "A92": "female, divorced, separated or married",
    "A93": "male, single", "A94": "male, married or widowed", "A95": "female, single",
    # 10 other debtors / guarantors
    "A101": "no other debtors or guarantors", "A102": "a co-applicant", "A103": "a guarantor",
    # 12 property
    "A121": "real estate", "A122": "a building society savings agreement or life insurance",
    "A123": "a car or other property", "A124": "unknown or no property",
    # 14 other installment plans
    "A141": "other installment plans at a bank", "A142": "other installment plans at stores",
    "A143": "no other installment plans",
    # 15 housing
    "A151": "rents", "A152": "owns", "A153": "lives for free",
    # 17 job
    "A171": "unemployed or unskilled non-resident", "A172": "unskilled resident",
    "A173": "skilled employee or official",
    "A174": "management, self-employed, highly qualified employee or officer",
    # 19 telephone
    "A191": "no telephone", "A192": "a telephone registered under the customer's name",
    # 20 foreign worker
    "A201": "a foreign worker", "A202": "not a foreign worker",
}

# one sentence template per attribute, in file order; {} is the code's phrase or the number
TEMPLATES = (
    "Checking account: {}.", "Duration: {} months.", "Credit history: {}.", "Purpose: {}.",
    "Credit amount: {} DM.", "Savings: {}.", "Employment: {}.",
    "Installment rate: {}% of disposable income.", "Personal status: {}.", "Other debtors: {}.",
    "Present residence since {} years.", "Property: {}.", "Age: {} years.", "Other plans: {}.",
    "Housing: {}.", "Existing credits at this bank: {}.", "Job: {}.",
    "People liable to provide maintenance for: {}.", "Telephone: {}.", "Foreign worker: {}.",
)
LABELS = {"1": "good", "2": "bad"}


def render_row(values: list[str], where: str) -> tuple[str, str]:
    """20 attribute values + class -> (text, label)."""
    if len(values) != 21:
        raise DataError(f"{where}: expected 21 columns (20 attributes + class), got {len(values)}")
    parts = []
    for i, (tmpl, v) in enumerate(zip(TEMPLATES, values[:20])):
        if v.startswith("A"):
            if v not in CODES:
                raise DataError(f"{where}: attribute {i + 1} has unknown code '{v}'")
            v = CODES[v]
        elif not v.lstrip("-").replace(".", "", 1).isdigit():
            raise DataError(f"{where}: attribute {i + 1} should be a number or a code, got '{v}'")
        parts.append(tmpl.format(v))
    label = LABELS.get(values[20])
    if label is None:
        raise DataError(f"{where}: class must be 1 (good) or 2 (bad), got '{values[20]}'")
    return " ".join(parts), label


def convert_german_credit(src: str | Path, dst: str | Path) -> dict:
    """german.data (whitespace separated) -> CSV with columns text,label. Returns counts."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DataError(f"file not found: {src}")
    rows = []
    for i, line in enumerate(_text_lines(src, detect_encoding(src)), start=1):
        vals = line.split()
        if not vals:
            continue
        rows.append(render_row(vals, f"{src}:{i}"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    counts: dict[str, int] = {}
    for _, lab in rows:
        counts[lab] = counts.get(lab, 0) + 1
    return {"rows": len(rows), "labels": counts, "out": str(dst)}
