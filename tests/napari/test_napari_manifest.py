"""The plugin's manifest is valid for napari and files the widget under what it does."""

from importlib.resources import files

import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_is_valid_and_its_categories_say_the_widget_uses_segmentations():
    manifest = npe2.PluginManifest.from_file(str(files("myvae._napari").joinpath("napari.yaml")))
    assert manifest.name == "myvae"
    categories = {str(getattr(category, "value", category)) for category in manifest.categories}
    # it annotates segmented cells with clusters and shows them; it does not make segmentations
    assert categories == {"Annotation", "Visualization"}
