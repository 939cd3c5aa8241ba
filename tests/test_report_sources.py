"""The report's generated sections: Jinja2 templates in report/templates/ fed by sources.py's data assembly."""

from __future__ import annotations

import re
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


def test_a_registered_family_without_a_block_gets_its_title_and_every_figure(tmp_path, monkeypatch):
    from PIL import Image

    from convscope.figures import FAMILIES, Family
    from convscope.report import sources

    monkeypatch.setitem(FAMILIES, "saliency", Family("saliency", "saliency", "Saliency_maps", (), lambda f, m: {}))
    folder = tmp_path / "figures/tiny/saliency"
    folder.mkdir(parents=True)
    for name in ("maps_10", "maps_2"):
        Image.new("RGB", (40, 20)).save(folder / f"{name}.png")
    (folder / "maps.npz").write_bytes(b"")  # not a figure
    model = sources.ModelArtifacts("tiny", {"config": {"arch": "resnet18"}}, "", 0, {}, folder.parent, {})
    env = templates(REPO / "report/templates", FigureCopier(tmp_path / "out", "_generated"))

    sections = sources.other_families(model)
    assert [s["title"] for s in sections] == [r"Saliency\_maps"]  # the hand-written families are not repeated
    text = env.get_template("family.qmd.j2").render(family=sections[0], m=model, s=model.slug)

    assert text.startswith("### Saliency\\_maps\n")
    assert r"@fig-tiny-saliency-0, @fig-tiny-saliency-1 show the Saliency\_maps figures of tiny \(resnet18\)." in text
    figures = re.findall(r"!\[(.*)\]\((.*)\)\{#(\S+) ", text)
    assert figures == [
        (
            rf"Saliency\_maps of tiny \(resnet18\): maps {n}",
            f"_generated/figures/tiny/saliency/maps_{n}.png",
            f"fig-tiny-saliency-{i}",
        )
        for i, n in enumerate((2, 10))
    ]
    assert sorted(p.name for p in (tmp_path / "out/figures/tiny/saliency").iterdir()) == ["maps_10.png", "maps_2.png"]


def test_a_broken_artifact_names_the_step_that_rebuilds_it(tmp_path):
    from convscope import paths
    from convscope.errors import ArtifactError
    from convscope.report.sources import agreement_data

    broken = tmp_path / paths.AGREEMENT
    broken.parent.mkdir(parents=True)
    broken.write_text('{"skipped": ')  # cut off mid-write
    with pytest.raises(ArtifactError, match="agreement.json.*rerun the compare_models step") as error:
        agreement_data(tmp_path, FigureCopier(tmp_path / "out", "_generated"))
    assert "\n" not in str(error.value)
