"""Keep Python's full garbage collections from rescanning the session's objects in the middle of training.

Python collects reference cycles generation by generation; every so often, triggered by how many objects were
created, it runs a full collection that visits every object the process holds. In a scanpy session that is over
half a million objects (the imported libraries' modules, classes and functions, the user's data), and a full
collection takes about 0.3 s on a 2-core machine. Training creates objects at every step, so one such pause falls in
the first epoch or so of a call. :func:`objects_frozen_while_training` moves the objects that exist when training
starts into the collector's permanent generation (``gc.freeze``) and back when it ends (``gc.unfreeze``): objects
created during training are collected as usual, the older ones are left for the collections after training (the
work is deferred, not skipped). A process that froze objects itself (``gc.get_freeze_count() > 0``) is left as it
is.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["objects_frozen_while_training"]


@contextmanager
def objects_frozen_while_training() -> Iterator[bool]:
    """Within the block, full garbage collections skip the objects that existed before it.

    Yields whether it froze them (``False`` if the process had frozen objects already, which are left frozen).
    """
    if gc.get_freeze_count():
        yield False
        return
    gc.freeze()
    try:
        yield True
    finally:
        gc.unfreeze()
