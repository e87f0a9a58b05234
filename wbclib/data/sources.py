"""The public datasets that ``wbc prepare`` reads: one row per source, the only list of them.

Each row gives the source's on-disk layout (quoted in every error about it), its license and citation (copied
into the prepared folder's ``LICENSE.md``, ``PROVENANCE.md`` and manifest), what it becomes in the course layout
(``stage``) and which options of ``wbc prepare`` may name it (``options``; ``"SOURCE"`` is the command's first
argument). The command's choices, the licenses and the readers of :mod:`wbclib.data.prepare` all come from here.

To add a source: add its row here and its reader ``_read_<name>`` to :mod:`wbclib.data.prepare` (a test checks that
every row has one), then copy the tests of a source of the same stage in ``tests/test_prepare.py``.

This module imports nothing heavy, so that ``wbc --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from wbclib.data.layout import LAYOUT_FOLDERS

PBC_FOLDER = "PBC_dataset_normal_DIB"
#: EBHI-Seg's classes grouped into the CAM16 stage's two classes and the reconstruction stage's tiles: the report
#: pretrains on unlabelled kidney tiles, then on lymph-node normal / tumour patches; here benign colon tissue stands
#: against high-grade neoplasia and cancer, and the intermediate low-grade class, unlabelled, is the tiles.
EBHI_GROUPING = "normal=Normal+Polyp,tumor=High-grade IN+Adenocarcinoma,tiles=Low-grade IN"
#: The course's CAM16 split (757 / 108 / 216 images) in percent: train, val, test.
CAM16_SPLIT = (70, 10, 20)
_NOT_STATED = "not stated: check the source"
_BCCD = ("MIT (BCCD_Dataset)", "BCCD_Dataset, https://github.com/Shenggan/BCCD_Dataset")


@dataclass(frozen=True)
class SourceKind:
    """One public dataset (or generic layout) ``wbc prepare`` can read."""

    name: str
    stage: str  # wbc: labelled cells (pool or masked share) | cells: a class-folder set | cam16: a histology
    #             set for the CAM16 stage | cam16-test: a CAM16-class test set | tiles: unlabelled tiles
    layout: str  # the expected layout, in words
    license: str
    citation: str
    options: tuple[str, ...] = ()  # the options that may name it; () = recognised by its folder's name only
    reader: str = ""  # the reader in wbclib.data.prepare (_read_<reader>); "" = the row's own name


_ROWS = (
    SourceKind("pbc", "wbc", f"<dir>/{PBC_FOLDER}/<lower-case class>/*.jpg (or <dir> being {PBC_FOLDER} itself)",
               "CC BY 4.0", "Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J. A dataset of "
               "microscopic peripheral blood cell images for development of automatic recognition systems. Data in "
               "Brief 30:105474 (2020). Mendeley Data, doi:10.17632/snkd93bnjr.1", ("SOURCE",)),
    SourceKind("raabin", "wbc",
               "<dir>/Train/<Class>/<image>, optionally <dir>/TestA/<Class>/ and <dir>/TestB/<Class>/",
               "see the release", "Kouzehkanan Z. M. et al. A large dataset of white blood cells containing cell "
               "locations and types, along with segmented nuclei and cytoplasm. Sci. Rep. 12:1123 (2022)",
               ("SOURCE",)),
    SourceKind("segwbc", "wbc",
               "<dir>/Dataset <n>/NNN.bmp + NNN.png with '<dir>/Class Labels of Dataset <n>.csv', or "
               "<dir>/dataset<n>/data/<Class>/NNN.bmp + <dir>/dataset<n>/mask/<Class>/NNN.png, or one such "
               "dataset<n> folder", "GPL-3.0",
               "Zheng X., Wang Y., Wang G., Liu J. Fast and robust segmentation of white blood cell images by "
               "self-supervised learning. Micron 107:55-71 (2018); images of Dataset 1 from Jiangxi Tecom Science "
               "Corporation, of Dataset 2 from the CellaVision blog", ("SOURCE", "--masked")),
    SourceKind("folders", "wbc", LAYOUT_FOLDERS, _NOT_STATED, _NOT_STATED, ("SOURCE", "--masked", "--external")),
    SourceKind("ebhi", "cam16",
               "<dir>/EBHI-SEG/<Class>/image/<name>.png with its mask <dir>/EBHI-SEG/<Class>/label/<name>.png "
               "(or <dir> being EBHI-SEG itself); classes Normal, Polyp, Low-grade IN, High-grade IN, "
               "Adenocarcinoma", "CC BY 4.0",
               "Shi L. et al. EBHI-Seg: a novel enteroscope biopsy histopathological hematoxylin and eosin image "
               "dataset for image segmentation tasks. Frontiers in Medicine 10:1114673 (2023); figshare, "
               "doi:10.6084/m9.figshare.21540159", ("SOURCE", "--cam16")),
    SourceKind("camelyon16", "cam16-test",
               "<dir>/sample_patches_256/{normal,tumor}/<slide>_<x>_<y>.png (x, y: the patch's top-left corner in "
               "level-0 pixels) with the slides' outlines in <dir>/annotations/<Slide>.json ({\"positive\": "
               "[{\"vertices\": [[x, y], ...]}], \"negative\": [...]})",
               "CC0 1.0 (patches); Apache-2.0 (tumour outlines)",
               "Ehteshami Bejnordi B. et al. Diagnostic assessment of deep learning algorithms for detection of lymph "
               "node metastases in women with breast cancer. JAMA 318(22):2199-2210 (2017); Litjens G. et al. 1399 "
               "H&E-stained sentinel lymph node sections of breast cancer patients: the CAMELYON dataset. "
               "GigaScience 7(6) (2018); outlines converted by the NCRF project (Apache-2.0)",
               ("SOURCE", "--external")),
    SourceKind("tiles", "tiles", "<dir>/**/<photo>.jpg (whole photographs, at any depth)", _NOT_STATED, _NOT_STATED,
               ("--tiles", "--smear-tiles")),
    SourceKind("bccd", "cells", LAYOUT_FOLDERS, *_BCCD, reader="folders"),
    SourceKind("bccd-smears", "tiles", "<dir>/**/<photo>.jpg (whole photographs, at any depth)", *_BCCD,
               reader="tiles"),
)

#: Every source by name, in the order of the rows above.
SOURCES: dict[str, SourceKind] = {row.name: row for row in _ROWS}


def named_by(option: str) -> tuple[str, ...]:
    """The sources an option may name (``"SOURCE"``: the first argument of ``wbc prepare``)."""
    return tuple(name for name, row in SOURCES.items() if option in row.options)


def reader_of(name: str) -> str:
    """The reader a source is read with (a source recognised by its folder's name reuses a generic one)."""
    row = SOURCES[name]
    return row.reader or row.name
