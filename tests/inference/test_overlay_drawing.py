"""Grad-CAM overlays drawn by a pool of threads: the same PNGs as one at a time, in order, and
a forked worker process draws with a pool of its own (a pool's threads do not survive a fork).
"""

from __future__ import annotations

import io
import multiprocessing

import numpy as np
from PIL import Image

from inference.pmpd.gradcam import overlay_png, overlay_rgb
from inference.predictions import draw_overlays


def slices(n: int, size: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(n)
    return [
        (rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32))
        for _ in range(n)
    ]


def test_overlays_drawn_by_threads_are_those_drawn_one_at_a_time_in_order():
    pairs = slices(9)
    pngs = draw_overlays(pairs)
    assert pngs == [overlay_png(ct, heat) for ct, heat in pairs]
    first = np.asarray(Image.open(io.BytesIO(pngs[0])))
    assert first.shape == (40, 40, 3) and np.array_equal(first, overlay_rgb(*pairs[0]))
    assert draw_overlays([]) == [] and draw_overlays(pairs[:1]) == pngs[:1]


def _draw_in_child(queue) -> None:
    queue.put(len(draw_overlays(slices(4))))


def test_a_forked_worker_draws_with_its_own_pool():
    draw_overlays(slices(3))  # the parent's pool exists before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_draw_in_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == 4
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
