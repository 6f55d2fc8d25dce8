"""The napari plugin: manifest, sample, and the widget on both backends, offscreen (QT_QPA_PLATFORM=offscreen)."""

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import fingerprint

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Labels, Points

from myvae._napari._cells import CLUSTER_COLUMN, FEATURES_ADATA_KEY, cell_counts, cluster_colors
from myvae._napari._sample import pbmc_tissue_cells

TIMEOUT_MS = 300_000


@pytest.fixture(autouse=True)
def labels_colours_without_opengl(qapp, monkeypatch):
    """Offscreen Qt gives napari no OpenGL context, so it cannot ask for the largest texture when labels change
    colour; give it a size any OpenGL 2 device has. The layers' data, features and colormaps stay napari's own."""
    from napari._vispy.utils.gl import get_max_texture_sizes

    if get_max_texture_sizes()[0] is None:
        monkeypatch.setattr("napari._vispy.layers.labels.get_max_texture_sizes", lambda: (2048, 2048))


@pytest.fixture(scope="module")
def tissue():
    """The sample's label image and AnnData (600 cells × 2,000 genes), built once per module."""
    return pbmc_tissue_cells()


@pytest.fixture
def tissue_layer(make_napari_viewer, tissue):
    viewer = make_napari_viewer()
    labels, adata = tissue
    layer = viewer.add_labels(labels.copy(), name="tissue", metadata={"adata": adata.copy()})
    return viewer, layer


def embed_cells_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("myvae", "myvae: embed cells")
    return widget


def run_to_end(qtbot, widget) -> None:
    assert widget.run(), widget.status
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def snapshot(viewer) -> list:
    """Everything a failed run must leave as it was: each layer's data, features, metadata and colours."""
    parts = []
    for layer in viewer.layers:
        metadata = {
            key: fingerprint(value) if isinstance(value, ad.AnnData) else value for key, value in layer.metadata.items()
        }
        colormap = layer.colormap.color_dict if hasattr(layer.colormap, "color_dict") else layer.colormap.name
        parts.append((layer.name, type(layer), layer.data.copy(), layer.features.copy(), metadata, repr(colormap)))
    return parts


def assert_same(before: list, after: list) -> None:
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        assert old[:2] == new[:2]
        np.testing.assert_array_equal(old[2], new[2])
        pd.testing.assert_frame_equal(old[3], new[3])
        assert old[4] == new[4]
        assert old[5] == new[5]


def test_manifest_validates_and_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(npe2), "validate", "myvae", "--imports"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_napari_lists_the_widget_and_the_sample():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    widgets = [widget.display_name for widget in manager.iter_widgets() if widget.plugin_name == "myvae"]
    samples = [sample.display_name for sample in manager.get_manifest("myvae").contributions.sample_data]
    assert widgets == ["myvae: embed cells"]
    assert samples == ["myvae: PBMC tissue"]


def test_core_package_imports_neither_napari_nor_qt():
    code = "import sys, myvae; print(sorted(m for m in ('napari', 'qtpy', 'PyQt5', 'magicgui') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_sample_opens_with_a_row_of_counts_per_cell(make_napari_viewer):
    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample("myvae", "pbmc_tissue")
    assert isinstance(layer, Labels)
    adata = layer.metadata["adata"]
    labels_in_image = np.setdiff1d(np.unique(layer.data), [0])
    assert adata.shape == (600, 2000)
    np.testing.assert_array_equal(np.sort(adata.obs["label_id"].to_numpy()), labels_in_image)
    assert np.array_equal(adata.X.data, np.round(adata.X.data)) and adata.X.data.min() > 0
    assert adata.obs["cell_type"].nunique() > 5


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_widget_embeds_clusters_and_paints_the_cells(qtbot, tissue_layer, backend):
    viewer, layer = tissue_layer
    widget = embed_cells_widget(viewer)
    widget._backend.value = backend
    widget._max_epochs.value = 3
    widget._n_latent.value = 5
    run_to_end(qtbot, widget)
    assert widget.status.startswith("Done"), widget.status
    assert widget._progress.value == widget._progress.max == 3

    adata = layer.metadata["adata"]
    assert adata.obsm["X_myvae"].shape == (600, 5) and np.isfinite(adata.obsm["X_myvae"]).all()
    assert adata.uns["myvae"]["params"]["backend"] == backend
    assert "callbacks" not in adata.uns["myvae"]["params"]  # the progress reporter watches; it shapes nothing
    clusters = adata.obs[CLUSTER_COLUMN]
    assert clusters.nunique() >= 2

    features = layer.features.set_index("index")
    cluster_of_label = pd.Series(clusters.to_numpy(), index=adata.obs["label_id"].to_numpy())
    np.testing.assert_array_equal(features.loc[cluster_of_label.index, CLUSTER_COLUMN], cluster_of_label)

    colors = cluster_colors(clusters.array)
    for label in adata.obs["label_id"].to_numpy()[::50]:
        np.testing.assert_allclose(layer.colormap.map(label), colors[cluster_of_label[label]])
    assert layer.colormap.map(0)[3] == 0

    points = viewer.layers["tissue: myvae UMAP"]
    assert isinstance(points, Points) and len(points.data) == 600
    np.testing.assert_allclose(points.face_color, np.stack([colors[c] for c in clusters]))
    assert np.isfinite(points.data).all()


def test_second_click_while_running_is_refused(qtbot, tissue_layer):
    viewer, layer = tissue_layer
    widget = embed_cells_widget(viewer)
    widget._max_epochs.value = 2
    assert widget.run()
    assert not widget.run()
    assert "Already running" in widget.status
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.status.startswith("Done"), widget.status
    assert len(viewer.layers) == 2


def test_counts_in_features_are_used_and_kept_in_metadata(qtbot, make_napari_viewer, small_adata):
    viewer = make_napari_viewer()
    counts = small_adata.X.toarray()
    image = np.repeat(np.repeat(np.arange(1, 81).reshape(8, 10), 5, axis=0), 5, axis=1)
    features = pd.DataFrame(counts, columns=small_adata.var_names)
    features.insert(0, "index", np.arange(1, 81))
    layer = viewer.add_labels(image, features=features)
    widget = embed_cells_widget(viewer)
    widget._max_epochs.value = 2
    run_to_end(qtbot, widget)
    assert widget.status.startswith("Done"), widget.status
    built = layer.metadata[FEATURES_ADATA_KEY]
    np.testing.assert_array_equal(built.X.toarray(), counts)
    np.testing.assert_array_equal(layer.features["index"], np.arange(1, 81))
    np.testing.assert_array_equal(layer.features[CLUSTER_COLUMN].to_numpy(), built.obs[CLUSTER_COLUMN].to_numpy())
    assert list(layer.features.columns[:-1]) == list(features.columns)


def _bad_layers(small_adata):
    image = np.repeat(np.repeat(np.arange(1, 81).reshape(8, 10), 5, axis=0), 5, axis=1)
    with_ids = small_adata.copy()
    with_ids.obs["label_id"] = np.arange(1, 81)
    lognormalised = with_ids.copy()
    lognormalised.X = np.log1p(lognormalised.X.toarray())
    return {
        "no counts": ({}, "carries no counts"),
        "non-count values": ({"adata": lognormalised}, "non-integer values"),
        "labels without a row": ({"adata": with_ids[5:].copy()}, "5 label(s) in the image have no row of counts"),
        "no label column": ({"adata": small_adata.copy()}, "no column 'label_id'"),
    }, image


@pytest.mark.parametrize("problem", ["no counts", "non-count values", "labels without a row", "no label column"])
def test_bad_layers_show_an_error_and_change_nothing(make_napari_viewer, small_adata, problem):
    cases, image = _bad_layers(small_adata)
    metadata, message = cases[problem]
    viewer = make_napari_viewer()
    viewer.add_labels(image, metadata=metadata)
    widget = embed_cells_widget(viewer)
    before = snapshot(viewer)
    assert not widget.run()
    assert not widget.running
    assert widget.status.startswith("Cannot run") and message in widget.status, widget.status
    assert_same(before, snapshot(viewer))


def test_without_a_labels_layer_the_widget_says_what_to_add(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = embed_cells_widget(viewer)
    assert not widget.run()
    assert "Add a Labels layer" in widget.status


def test_cell_counts_rejects_duplicate_label_ids(small_adata):
    small_adata.obs["label_id"] = np.r_[np.arange(1, 80), 79]
    image = np.arange(1, 81).reshape(8, 10)
    with pytest.raises(ValueError, match="label\\(s\\) 79 more than once"):
        cell_counts(image, {"adata": small_adata}, pd.DataFrame())
