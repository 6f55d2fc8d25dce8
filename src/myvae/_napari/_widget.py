"""The "myvae: embed cells" widget: train on a Labels layer's cells in a worker thread, then paint the results."""

from __future__ import annotations

from functools import partial

from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Labels
from napari.qt.threading import FunctionWorker, create_worker
from napari.viewer import Viewer
from qtpy.QtCore import QObject, Signal

from myvae._exceptions import InputError, TrainingDivergedError
from myvae._napari._cells import CellCounts, CellEmbedding, cell_counts, embed_and_cluster
from myvae._napari._paint import write_results

__all__ = ["EmbedCellsWidget"]


class _EpochSignal(QObject):
    """Carries "epochs finished" from the training thread to the widget (a queued Qt connection)."""

    finished_epochs = Signal(int)


class EmbedCellsWidget(Container):
    """Embed and cluster the segmented cells of a Labels layer with myvae.

    The layer's cells carry counts in ``layer.metadata["adata"]`` (an AnnData with one row per label and the label
    ids in ``obs["label_id"]``, or in the column named by ``layer.metadata["instance_key"]``) or as count columns of
    ``layer.features``. *Run* trains in a worker thread; then the AnnData gets ``obsm["X_myvae"]``,
    ``obsm["X_myvae_umap"]`` and ``obs["myvae_leiden"]``, ``layer.features`` gets ``myvae_leiden``, the labels are
    coloured by cluster, and a Points layer shows the UMAP of the latent space in the same colours. Problems are
    shown in the widget and change nothing.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it).
    """

    def __init__(self, napari_viewer: Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._layer = ComboBox(label="cells", choices=self._labels_layers, tooltip="Labels layer of segmented cells")
        self._backend = ComboBox(label="backend", choices=["torch", "pyro"], value="torch")
        self._n_latent = SpinBox(label="n_latent", min=2, max=100, value=10, tooltip="dimensions of the latent space")
        self._max_epochs = SpinBox(
            label="max_epochs", min=1, max=5000, value=200, tooltip="training stops earlier once it has converged"
        )
        self._resolution = FloatSpinBox(
            label="Leiden resolution", min=0.05, max=10.0, step=0.1, value=1.0, tooltip="higher: more clusters"
        )
        self._run_button = PushButton(text="Run")
        self._progress = ProgressBar(label="epochs", min=0, max=1, value=0)
        self._status = Label(label="", value="")
        self._status.native.setWordWrap(True)
        self.extend(
            [
                self._layer,
                self._backend,
                self._n_latent,
                self._max_epochs,
                self._resolution,
                self._run_button,
                self._progress,
                self._status,
            ]
        )
        self._worker: FunctionWorker | None = None
        self._epochs = _EpochSignal()
        self._epochs.finished_epochs.connect(self._show_epochs)
        self._run_button.changed.connect(self.run)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layer.reset_choices)

    def _labels_layers(self, _widget: ComboBox | None = None) -> list[Labels]:
        return [layer for layer in self._viewer.layers if isinstance(layer, Labels)]

    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self._worker is not None

    @property
    def status(self) -> str:
        """The message the widget shows: what the last run did, or what was wrong."""
        return self._status.value

    def run(self) -> bool:
        """Check the chosen layer and start training in a worker thread; ``False`` (and a message) if refused."""
        if self.running:
            self._status.value = "Already running: wait for the current run to finish."
            return False
        layer = self._layer.value
        if layer is None:
            self._status.value = "Add a Labels layer of segmented cells first."
            return False
        try:
            cells = cell_counts(layer.data, layer.metadata, layer.features)
        except InputError as error:
            self._status.value = f"Cannot run: {error}"
            return False
        max_epochs = self._max_epochs.value
        self._progress.max = max_epochs
        self._progress.value = 0
        self._status.value = f"Training on {cells.adata.n_obs:,} cells × {cells.adata.n_vars:,} genes…"
        worker = create_worker(
            embed_and_cluster,
            cells,
            backend=self._backend.value,
            n_latent=self._n_latent.value,
            max_epochs=max_epochs,
            resolution=self._resolution.value,
            on_epoch=self._epochs.finished_epochs.emit,
            _start_thread=False,
        )
        worker.returned.connect(partial(self._finish, layer, cells))
        worker.errored.connect(self._fail)
        worker.finished.connect(self._release)
        self._worker = worker
        self._run_button.enabled = False
        worker.start()
        return True

    def _show_epochs(self, epochs: int) -> None:
        self._progress.value = min(epochs, self._progress.max)

    def _finish(self, layer: Labels, cells: CellCounts, embedding: CellEmbedding) -> None:
        if layer not in self._viewer.layers:
            self._status.value = f"Layer {layer.name!r} was removed during training; nothing was written."
            return
        write_results(self._viewer, layer, cells, embedding)
        self._progress.value = self._progress.max
        epochs = embedding.trained.uns["myvae"]["params"]["epochs_trained"]
        self._status.value = (
            f"Done: {epochs} epochs, {len(embedding.clusters.categories)} clusters in features['myvae_leiden']."
        )

    def _fail(self, error: Exception) -> None:
        if isinstance(error, InputError | TrainingDivergedError):
            self._status.value = f"Failed: {error}"
        else:
            self._status.value = f"Failed ({type(error).__name__}): {error}. Nothing was written."

    def _release(self) -> None:
        self._worker = None
        self._run_button.enabled = True
