"""The review on a `gres view` run page: a person flips answers and rejects masks by keyboard
and mouse, the corrections survive a reload (localStorage, keyed by the run's id), and the
downloaded corrections.json is what `grd_tools.corrections.read_corrections` (the reader of
`gres grd from-run --corrections`) accepts, naming the run as `run_id` of its settings.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import test_view
from test_view import make_run, open_page, read_data, runner, wait_until

from grd_tools.corrections import read_corrections, run_id
from gres_cli.cli import app
from gres_cli.view import default_out

REPO = Path(__file__).resolve().parents[1]
browser = test_view.browser  # the headless Chromium fixture (skips without it, fails in CI)


def build(run: Path, out: Path | None = None) -> Path:
    args = ["view", str(run)] + (["--out", str(out)] if out else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return (out or default_out(run)) / "index.html"


def reopen(page, index: Path) -> None:
    """Open `index` in the same tab (the same browser storage: open_page's pages each have
    their own)."""
    page.goto(index.as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=10_000)


def focused(page) -> str | None:
    return page.evaluate("document.activeElement.closest('.card')?.querySelector('.name').title")


def counter(page) -> str:
    return page.locator("#review-count").inner_text()


def download(page, tmp_path: Path, how) -> Path:
    with page.expect_download() as info:
        how()
    assert info.value.suggested_filename == "corrections.json"
    path = tmp_path / f"corrections-{len(list(tmp_path.glob('corrections-*')))}.json"
    info.value.save_as(path)
    return path


# ---- the page's data ------------------------------------------------------------------------
def test_run_page_names_its_run_by_the_id_of_its_settings(tmp_path: Path):
    run = make_run(tmp_path)
    build(run)
    data = read_data(tmp_path / "run-view")
    settings = json.loads((run / "settings.json").read_text())
    assert data["review"] == {"run": run_id(settings), "off": None}
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert [i["image"] for i in data["items"]] == [r["image"] for r in records]
    # the run's own records.jsonl is the same run
    build(run / "records.jsonl", tmp_path / "from-records")
    assert read_data(tmp_path / "from-records")["review"]["run"] == run_id(settings)


def test_review_is_off_where_no_settings_name_the_run(browser, tmp_path: Path):
    run = make_run(tmp_path)
    copy = tmp_path / "answers.jsonl"  # `--jsonl FILE`: records outside their run folder
    shutil.copyfile(run / "records.jsonl", copy)
    data = read_data(build(copy).parent)
    assert data["review"]["run"] is None
    assert "outside its run folder" in data["review"]["off"]
    old = make_run(tmp_path / "old", settings=None)  # made before runs had settings.json
    data = read_data(build(old).parent)
    assert data["review"]["run"] is None and "no settings.json" in data["review"]["off"]
    page = open_page(browser, build(copy).parent / "index.html")
    assert "Review is off: answers.jsonl is a records file" in page.inner_text("#review-off")
    assert page.locator("#review, .review-controls").count() == 0
    assert page.locator(".grid .card").count() == 10  # the answers still show
    page.keyboard.press("j")
    page.keyboard.press("f")
    assert page.problems == []


# ---- in a browser ---------------------------------------------------------------------------
def test_three_answers_flipped_by_keyboard_survive_a_reload_and_download_as_corrections(
    browser, tmp_path: Path
):
    """The issue's test, on a real `gres segment` run of the demo model: its settings.json,
    its records' image paths as written."""
    photos = tmp_path / "photos"
    shutil.copytree(REPO / "examples/synth-demo/images/synth-0000", photos)
    out = tmp_path / "out"
    args = ["segment", str(photos), "the red cross on the bottom", "--out", str(out)]
    result = runner.invoke(app, [*args, "--model", str(REPO / "examples/demo-model")])
    assert result.exit_code == 0, result.output
    records = {
        Path(r["image"]).name: r
        for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())
    }
    index = build(out)
    page = open_page(browser, index)
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    assert "j / →" in page.inner_text("#review-keys")  # the keys are on the page
    flipped = []
    for key in ("j", "f", "j", "j", "f", "ArrowRight", "f"):  # first, third and fourth card
        page.keyboard.press(key)
        if key == "f":
            flipped.append(Path(focused(page)).name)
    assert len(set(flipped)) == 3
    assert counter(page) == "3 changed (3 flipped, 0 rejected)"
    assert page.locator(".card[data-answer]").count() == 3
    assert "not downloaded yet" in page.inner_text("#review-status")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert counter(page) == "3 changed (3 flipped, 0 rejected)"
    shown = page.locator(".card[data-answer] .name").all_inner_texts()
    assert sorted(shown) == sorted(flipped)
    path = download(page, tmp_path, lambda: page.keyboard.press("d"))
    corrections = read_corrections(path)
    assert corrections.run == run_id(json.loads((out / "settings.json").read_text()))
    expected = {}
    for name in flipped:
        rec = records[name]
        was = "present" if rec["present"] else "absent"
        answer = "absent" if rec["present"] else "present"
        expected[(rec["image"], rec["expression"])] = (rec["group"], was, answer)
    got = {k: (c.group, c.was, c.answer) for k, c in corrections.items.items()}
    assert got == expected
    # downloaded, and kept: the person clears them when they choose to
    assert "downloaded" in page.inner_text("#review-status")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert counter(page) == "3 changed (3 flipped, 0 rejected)"
    assert "downloaded" in page.inner_text("#review-status")
    assert page.problems == []
    page.close()


def test_reject_by_mouse_undo_and_clear(browser, tmp_path: Path):
    run = make_run(tmp_path)
    page = open_page(browser, build(run))
    page.select_option("#sort", "name")
    present = page.locator(".grid .card[data-present=true]").first  # alpha/0000.png
    absent = page.locator(".grid .card[data-present=false]").first  # alpha/0002.png
    present.locator(".review-reject").click()
    assert counter(page) == "1 changed (0 flipped, 1 rejected)"
    assert present.get_attribute("data-answer") == "rejected"
    assert present.locator(".review-reject").get_attribute("aria-pressed") == "true"
    assert "you: mask rejected" in present.inner_text()
    absent.locator(".review-flip").click()
    assert absent.get_attribute("data-answer") == "present"
    assert counter(page) == "2 changed (1 flipped, 1 rejected)"
    page.select_option("#filter", "corrected")
    assert page.locator(".grid .card .name").all_inner_texts() == ["0000.png", "0002.png"]
    page.select_option("#filter", "all")
    # the failed image has nothing to correct
    assert page.locator(".card[data-present=null] .review-controls").count() == 0
    page.keyboard.press("u")  # undoes the flip
    assert counter(page) == "1 changed (0 flipped, 1 rejected)"
    assert "undone: alpha/0002.png" in page.inner_text("#review-status")
    page.keyboard.press("u")
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    page.keyboard.press("u")
    assert "nothing to undo" in page.inner_text("#review-status")
    # flip twice is back to the model's answer; a reject after a flip replaces it
    card = page.locator(".grid .card[data-present=true]").nth(1)  # alpha/0001.png
    card.locator(".review-flip").click()
    card.locator(".review-flip").click()
    assert card.get_attribute("data-answer") is None
    card.locator(".review-flip").click()
    card.locator(".review-reject").click()
    assert card.get_attribute("data-answer") == "rejected"
    path = download(page, tmp_path, lambda: page.click("#review-download"))
    items = read_corrections(path).items
    assert [(k[0].split("/")[-1], c.was, c.answer) for k, c in items.items()] == [
        ("0001.png", "present", "rejected")
    ]
    # clear asks first; dismissed, nothing goes
    page.once("dialog", lambda d: d.dismiss())
    page.click("#review-clear")
    assert counter(page) == "1 changed (0 flipped, 1 rejected)"
    page.once("dialog", lambda d: d.accept())
    page.click("#review-clear")
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    assert page.locator(".card[data-answer]").count() == 0
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    assert page.problems == []
    page.close()


def test_corrections_of_another_run_do_not_show(browser, tmp_path: Path):
    """Two runs of the same photos and records whose settings differ (another margin): the
    same browser storage, keyed by run id, keeps each run's corrections to its own page."""
    first = make_run(tmp_path / "a")
    second = tmp_path / "b" / "run"
    shutil.copytree(first, second)
    (second / "settings.json").write_text(
        json.dumps({**json.loads((first / "settings.json").read_text()), "margin": 0.5})
    )
    first_page, second_page = build(first), build(second)
    page = open_page(browser, first_page)
    page.keyboard.press("j")
    page.keyboard.press("f")
    assert counter(page) == "1 changed (1 flipped, 0 rejected)"
    reopen(page, second_page)
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    assert page.locator(".card[data-answer]").count() == 0
    corrections = read_corrections(download(page, tmp_path, lambda: page.keyboard.press("d")))
    assert corrections.run == read_data(second_page.parent)["review"]["run"]
    assert corrections.items == {}
    page.keyboard.press("j")
    page.keyboard.press("x")
    page.once("dialog", lambda d: d.accept())
    page.click("#review-clear")  # forgets this run's, not the other's
    reopen(page, first_page)
    assert counter(page) == "1 changed (1 flipped, 0 rejected)"
    assert page.problems == []
    page.close()


def test_a_browser_that_refuses_storage_says_to_download(browser, tmp_path: Path):
    index = build(make_run(tmp_path))
    page = browser.new_page()
    full = "() => { throw new DOMException('full', 'QuotaExceededError'); }"
    page.add_init_script(f"Storage.prototype.setItem = {full}")  # as a full or private store
    reopen(page, index)
    page.keyboard.press("j")
    page.keyboard.press("f")
    assert counter(page) == "1 changed (1 flipped, 0 rejected)"  # the page still counts it
    assert "browser storage is off" in page.inner_text("#review-status")
    path = download(page, tmp_path, lambda: page.keyboard.press("d"))
    assert len(read_corrections(path).items) == 1
    page.close()


def test_two_tabs_of_one_run_share_their_corrections(browser, tmp_path: Path):
    index = build(make_run(tmp_path))
    context = browser.new_context()  # one browser profile, two tabs
    first, second = context.new_page(), context.new_page()
    reopen(first, index)
    reopen(second, index)
    first.keyboard.press("j")
    first.keyboard.press("x")
    wait_until(
        second, "document.querySelector('#review-count').textContent.startsWith('1 changed')"
    )
    assert second.locator(".card[data-answer=rejected]").count() == 1
    context.close()


def test_keys_move_across_pages_and_leave_the_filters_alone(browser, tmp_path: Path):
    run = make_run(tmp_path, extra_records=300)
    page = open_page(browser, build(run))
    page.keyboard.press("k")  # from nowhere: the last card of the page
    assert page.evaluate(
        "document.activeElement === [...document.querySelectorAll('.grid .card')].at(-1)"
    )
    outline = "(({outlineStyle, outlineWidth}) => outlineStyle + ' ' + outlineWidth)"
    assert page.evaluate(f"{outline}(getComputedStyle(document.activeElement))") == "solid 3px"
    page.keyboard.press("j")  # past the last card: the next page's first
    assert "page 2 of 3" in page.inner_text(".page-info")
    assert page.evaluate("document.activeElement === document.querySelector('.grid .card')")
    page.keyboard.press("k")
    assert "page 1 of 3" in page.inner_text(".page-info")
    page.keyboard.press("Enter")  # the large view of the card in focus
    assert page.locator("#viewer").is_visible()
    page.keyboard.press("f")  # the dialog has the keys: no change behind it
    page.keyboard.press("Escape")
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    page.focus("#search")
    page.keyboard.type("fxj")  # typing in the search box is text, not commands
    assert page.input_value("#search") == "fxj"
    assert counter(page) == "0 changed (0 flipped, 0 rejected)"
    assert page.problems == []
