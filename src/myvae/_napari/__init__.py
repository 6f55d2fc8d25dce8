"""The napari plugin (``pip install 'myvae[napari]'``): embed and cluster segmented cells from the viewer.

Nothing in :mod:`myvae` imports this package; napari finds it through the ``napari.manifest`` entry point.
"""
