"""The report's generated sections: Jinja2 templates in report/templates/ fed by sources.py's data assembly."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from convscope.errors import ReportError
from convscope.report.sources import FigureCopier, dataset_data, plural, table, templates

SPECIAL = "a*b_c#d$e@f<g|h"


def _dataset(tmp_path: Path, skipped: list[str], classes: list[str]) -> str:
    index = {
        "kind": "imagefolder",
        "classes": classes,
        "skipped": skipped,
        "labels": {"train": [0] * 3, "val": [0], "test": [0, 0]},
    }
    env = templates(REPO / "report/templates", FigureCopier(tmp_path, "_generated"))
    text = env.get_template("dataset.qmd.j2").render(data=dataset_data(index, {"root": "data/raw/x"}))
    return " ".join(text.split())


def test_plural_follows_the_count():
    assert [plural(1, "model"), plural(2, "model"), plural(0, "epoch"), plural(1, "class", "classes")] == [
        "1 model",
        "2 models",
        "0 epochs",
        "1 class",
    ]


def test_dataset_section_escapes_class_names_and_names_skipped_files(tmp_path):
    text = _dataset(tmp_path, ["cat/bad_1.jpg"], [SPECIAL, "dog"])
    assert r"a\*b\_c\#d\$e\@f\<g\|h, dog." in text
    assert "1 class" not in text and "2 classes" in text
    assert r"1 unreadable image file was skipped when the dataset was indexed: `cat/bad_1.jpg`." in text


def test_many_skipped_files_go_to_the_appendix(tmp_path):
    text = _dataset(tmp_path, [f"c/{i}.jpg" for i in range(9)], ["cat"])
    assert "9 unreadable image files were skipped" in text and "the appendix lists them" in text
    assert "c/0" not in text


def test_a_broken_template_is_one_line_naming_it(tmp_path):
    from convscope.report import sources

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "comparison.qmd.j2").write_text("line one\n{{ table( }}\n")
    with pytest.raises(ReportError, match=r"comparison\.qmd\.j2:2: .*fix the template$") as err:
        sources.write_sources(
            [],
            {"dataset": {}},
            _index(tmp_path),
            tmp_path / "report/_generated",
            tmp_path / "report/_variables.yml",
            tmp_path,
            templates_dir=folder,
        )
    assert "\n" not in str(err.value) and not (tmp_path / "report/_generated").exists()


def _index(tmp_path: Path) -> Path:
    path = tmp_path / "index.json"
    path.write_text('{"kind": "shapes", "classes": ["a"], "labels": {"train": [0], "val": [0], "test": [0]}}')
    return path


def test_wide_table_columns_are_as_wide_as_their_longest_word():
    header = ["model", "parameters", "input", "epochs"]
    text = table(header, [[r"inception\_v3 (inception\_v3)", "25.11 M", "299 px", 12]], "Models", "comparison", "lrrr")
    rule = text.splitlines()[1].strip("|").split("|")
    dashes = [len(cell.strip().strip(":")) for cell in rule]
    # pandoc sizes a wide table's columns by these dashes: no header word may get fewer than it has letters
    assert all(d >= len(word) for d, word in zip(dashes, header)), dashes
    assert dashes[0] == max(dashes)


def test_cam_share_in_the_object_says_plainly_when_it_is_not_defined(tmp_path):
    env = templates(REPO / "report/templates", FigureCopier(tmp_path, "_generated"))
    cam_share = env.get_template("models.qmd.j2").make_module({"models": []}).cam_share
    defined = cam_share("misclassified", 0.412, 0.135)
    blank, empty = cam_share("correctly classified", None, 0.08), cam_share("correctly classified", None, None)
    assert defined == "41.2% for misclassified images, whose objects cover 13.5% of the image"
    assert blank.startswith("not defined for correctly classified images, as every one of their maps was blank")
    assert empty == "not defined for correctly classified images, as there were none"
    assert not any("–" in text for text in (defined, blank, empty))
