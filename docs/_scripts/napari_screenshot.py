"""Take the screenshot of the napari widget shown in the docs: the sample tissue after a run.

Needs a display with OpenGL: on a machine without a screen, run it under Xvfb (`make napari-screenshot`)::

    xvfb-run -a python docs/_scripts/napari_screenshot.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "_static" / "napari_widget.png"


def main() -> int:
    """Open the sample, run the widget with its defaults and save a screenshot of the whole window."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="myvae", show=True)
    viewer.window._qt_window.resize(1500, 850)
    viewer.open_sample("myvae", "pbmc_tissue")
    _, widget = viewer.window.add_plugin_dock_widget("myvae", "myvae: embed cells")
    if not widget.run():
        raise RuntimeError(widget.status)
    application = QApplication.instance()
    while widget.running:
        application.processEvents()
        time.sleep(0.05)
    print(widget.status)
    viewer.layers.selection.active = viewer.layers[0]
    for _ in range(20):
        application.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    application.processEvents()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    print(f"wrote {OUT}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
