"""wbclib: a multi-task UNet for white-blood-cell classification and the study built on it."""

__version__ = "0.1.0"

#: The five leukocyte classes, in the alphabetical order that defines their class index.
WBC_CLASSES = ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil")
#: The nested WBC training subsets, in percent of the full training set: WBC_1 ⊂ WBC_10 ⊂ WBC_50 ⊂ WBC_100.
WBC_SUBSETS = (1, 10, 50, 100)
#: The label of an unlabelled image (pRCC tiles): no classification loss, no class mask.
NO_LABEL = -1
#: CAMELYON16 patch classes: normal = 0, tumor = 1.
CAM16_CLASSES = ("normal", "tumor")


class WbcError(Exception):
    """A user error (bad data, bad config): the ``wbc`` command prints it on one line, without a traceback."""
