"""The corrections contract shared by the review page and `gres grd from-run`."""

import json

import pytest

from grd_tools.corrections import (
    Correction,
    corrections_document,
    parse_corrections,
    read_corrections,
    run_id,
)
from grd_tools.errors import GRDError


def test_run_id_ignores_formatting_and_key_order():
    a = {"model": "/m", "margin": 0.25, "group": True}
    b = json.loads(json.dumps({"group": True, "margin": 0.25, "model": "/m"}, indent=4))
    assert run_id(a) == run_id(b)
    assert run_id(a) != run_id({**a, "margin": 0.3})
    # sha256 of {"group":true,"margin":0.25,"model":"/m"}, checked with sha256sum
    assert run_id(a) == "7194adcb6530c2e29a48a64d356154b8b0686f939a3f369c851042e90ba25b88"


def test_corrections_round_trip_and_last_entry_wins(tmp_path):
    first = Correction("a.jpg", "the cat", "g", "present", "absent")
    again = Correction("a.jpg", "the cat", "g", "present", "rejected")
    other = Correction("b.jpg", "the cat", "g", "absent", "present")
    path = tmp_path / "corrections.json"
    path.write_text(json.dumps(corrections_document("r1", [first, other, again])))
    got = read_corrections(path)
    assert got.run == "r1"
    assert got.items == {("a.jpg", "the cat"): again, ("b.jpg", "the cat"): other}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not a gres corrections file"),
        ({"format": "gres-corrections", "version": 2}, "version 2"),
        ({"format": "gres-corrections", "version": 1, "run": ""}, '"run" must name'),
        (
            {"format": "gres-corrections", "version": 1, "run": "r", "corrections": [{"image": 1}]},
            'corrections[0]: "image" must be a string',
        ),
        (
            {
                "format": "gres-corrections",
                "version": 1,
                "run": "r",
                "corrections": [
                    {
                        "image": "a",
                        "expression": "e",
                        "group": "g",
                        "was": "present",
                        "answer": "yes",
                    }
                ],
            },
            "answer 'yes' is not one of present, absent, rejected",
        ),
    ],
)
def test_a_bad_corrections_file_is_one_line_naming_the_fault(doc, message):
    with pytest.raises(GRDError) as e:
        parse_corrections(doc, "c.json")
    assert message in str(e.value) and "\n" not in str(e.value)
