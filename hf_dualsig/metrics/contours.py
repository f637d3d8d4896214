"""The boxes of cv2.findContours(u > t, RETR_TREE, CHAIN_APPROX_SIMPLE) at every level t at once (numba kernels).

What OpenCV returns at level t, and how it is tracked here with union-find over the pixels sorted by level:
- one outer contour per 8-connected foreground component; its box is the component's pixel box (x1, y1 one past the
  last pixel, clipped to the image). Components only grow and merge as t falls: one descending sweep.
- one hole contour per 4-connected background component not connected to the image border; its contour runs
  through the foreground pixels around it, so its box is the hole's pixel box grown by one pixel (then x1, y1 one
  past, clipped). Background components only grow and merge as t rises: one ascending sweep.
- the largest cv2.contourArea is an outer contour of a top-level component (a hole's polygon lies inside its
  parent's; an island's inside its hole's), and OpenCV lists top-level contours last-found first, so ties go to the
  component whose first pixel in raster order comes last. The area of an outer contour through pixel centres is
  Q4 + Q3 / 2, Qk counting the 2x2 windows with k pixels in the filled component (the component and all it
  encloses). A pixel is in a filled top-level component at level t iff it is not yet in the background connected
  to the border, i.e. iff t < o, o being the level at which it joins that background (from the ascending sweep):
  the 8-connected components of o > t are the filled top-level components, swept like the foreground.

Hit counts: how many of the IoU thresholds (ascending) a box meets with its best ground-truth box, 0..len.
"""

import numba
import numpy as np

_NEIGHBOURS_4 = ((0, -1), (-1, 0), (1, 0), (0, 1))
_NEIGHBOURS_8 = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))


@numba.njit(cache=True)
def _level_order(values, top):
    """Flat pixel indices sorted by value (counting sort) and where each value 0..top starts in that order."""
    counts = np.zeros(top + 2, np.int64)
    for v in values:
        counts[np.int64(v) + 1] += 1
    starts = np.cumsum(counts)
    fill = starts[:-1].copy()
    order = np.empty(values.size, np.int64)
    for p in range(values.size):
        order[fill[values[p]]] = p
        fill[values[p]] += 1
    return order, starts


@numba.njit(cache=True)
def _find(parent, p):
    while parent[p] != p:
        parent[p] = parent[parent[p]]
        p = parent[p]
    return p


@numba.njit(cache=True)
def _link(parent, size, box, a, b):
    """Union of roots a and b (by size), with the union of their pixel boxes; returns the new root."""
    if size[a] < size[b]:
        a, b = b, a
    parent[b] = a
    size[a] += size[b]
    box[a, 0] = min(box[a, 0], box[b, 0])
    box[a, 1] = min(box[a, 1], box[b, 1])
    box[a, 2] = max(box[a, 2], box[b, 2])
    box[a, 3] = max(box[a, 3], box[b, 3])
    return a


@numba.njit(cache=True)
def _hits(x0, y0, x1, y1, gt, iou_thresholds):
    """Number of IoU thresholds met by the box's best IoU with any GT box (inclusive pixels, as `box_iou`)."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(gt.shape[0]):
        inter_w = max(0.0, min(x1, gt[g, 2]) - max(x0, gt[g, 0]) + 1)
        inter_h = max(0.0, min(y1, gt[g, 3]) - max(y0, gt[g, 1]) + 1)
        inter = inter_w * inter_h
        union = area + (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1) - inter
        if union > 0:
            best = max(best, inter / union)
    met = 0
    for threshold in iou_thresholds:
        met += best >= threshold
    return met


@numba.njit(cache=True)
def _count(counts, met, sign):
    """counts[k] = number of live contours meeting k+1 or more thresholds."""
    for k in range(met):
        counts[k] += sign


@numba.njit(cache=True)
def _most_met(counts):
    met = 0
    for k in range(counts.size):
        if counts[k] > 0:
            met = k + 1
    return met


@numba.njit(cache=True)
def _walk(first, following, joined, root, level):
    """Mark every pixel of the set `root` as joining the border background at `level`."""
    p = first[root]
    while p >= 0:
        joined[p] = level
        p = following[p]


@numba.njit(cache=True)
def hole_sweep(u, peak, gt, iou_thresholds):
    """For levels t < peak: the most thresholds any hole contour of u > t meets; and o, the level at which each
    pixel joins the background connected to the image border (peak where that is not below peak)."""
    height, width = u.shape
    flat = u.ravel()
    order, starts = _level_order(flat, 255)
    n = flat.size
    parent, size = np.arange(n), np.ones(n, np.int64)
    box = np.empty((n, 4), np.int64)
    border = np.zeros(n, np.bool_)
    active = np.zeros(n, np.bool_)
    met = np.zeros(n, np.int64)
    first, last, following = np.arange(n), np.arange(n), np.full(n, -1)
    joined = np.full(n, peak, np.int64)
    counts = np.zeros(len(iou_thresholds), np.int64)
    most = np.zeros(peak, np.int64)
    for level in range(peak):
        for i in range(starts[level], starts[level + 1]):
            p = order[i]
            y, x = divmod(p, width)
            active[p] = True
            box[p, 0], box[p, 1], box[p, 2], box[p, 3] = x, y, x, y
            border[p] = x == 0 or y == 0 or x == width - 1 or y == height - 1
            if border[p]:
                joined[p] = level
            root = p
            for dx, dy in _NEIGHBOURS_4:
                nx, ny = x + dx, y + dy
                if nx < 0 or ny < 0 or nx >= width or ny >= height or not active[ny * width + nx]:
                    continue
                other = _find(parent, ny * width + nx)
                if other == root:
                    continue
                if not border[other]:
                    _count(counts, met[other], -1)
                if border[root] and not border[other]:
                    _walk(first, following, joined, other, level)
                elif border[other] and not border[root]:
                    _walk(first, following, joined, root, level)
                elif not border[root]:
                    following[last[root]] = first[other]
                    last[root] = last[other]
                merged = _link(parent, size, box, root, other)
                first[merged], last[merged] = first[root], last[root]
                border[merged] = border[root] or border[other]
                root = merged
            if not border[root]:
                met[root] = _hits(
                    box[root, 0] - 1,
                    box[root, 1] - 1,
                    min(box[root, 2] + 2, width - 1),
                    min(box[root, 3] + 2, height - 1),
                    gt,
                    iou_thresholds,
                )
                _count(counts, met[root], 1)
        most[level] = _most_met(counts)
    return most, joined.reshape(height, width)


@numba.njit(cache=True)
def _add_foreground_pixel(p, width, height, parent, size, box, active, absorbed):
    """Activate pixel p and merge it with its active 8-neighbours; returns its root and how many distinct roots it
    absorbed (stored in `absorbed`)."""
    y, x = divmod(p, width)
    active[p] = True
    box[p, 0], box[p, 1], box[p, 2], box[p, 3] = x, y, x, y
    root, count = p, 0
    for dx, dy in _NEIGHBOURS_8:
        nx, ny = x + dx, y + dy
        if nx < 0 or ny < 0 or nx >= width or ny >= height or not active[ny * width + nx]:
            continue
        other = _find(parent, ny * width + nx)
        if other != root:
            absorbed[count] = other
            count += 1
            root = _link(parent, size, box, root, other)
    return root, count


@numba.njit(cache=True)
def component_sweep(u, peak, gt, iou_thresholds):
    """For levels t < peak: the most thresholds any outer contour of u > t meets."""
    height, width = u.shape
    flat = u.ravel()
    order, starts = _level_order(flat, 255)
    n = flat.size
    parent, size = np.arange(n), np.ones(n, np.int64)
    box = np.empty((n, 4), np.int64)
    active = np.zeros(n, np.bool_)
    met = np.zeros(n, np.int64)
    counts = np.zeros(len(iou_thresholds), np.int64)
    most = np.zeros(peak, np.int64)
    absorbed = np.empty(8, np.int64)
    for level in range(peak - 1, -1, -1):
        for i in range(starts[level + 1], starts[level + 2]):
            root, count = _add_foreground_pixel(order[i], width, height, parent, size, box, active, absorbed)
            for other in absorbed[:count]:
                _count(counts, met[other], -1)
            met[root] = _hits(
                box[root, 0], box[root, 1], min(box[root, 2] + 1, width - 1), min(box[root, 3] + 1, height - 1),
                gt, iou_thresholds,
            )
            _count(counts, met[root], 1)
        most[level] = _most_met(counts)
    return most


@numba.njit(cache=True)
def _heap_push(heap, length, value):
    """Max-heap of ints in heap[:length]; returns the new length."""
    i = length
    heap[i] = value
    while i > 0 and heap[(i - 1) // 2] < heap[i]:
        heap[(i - 1) // 2], heap[i] = heap[i], heap[(i - 1) // 2]
        i = (i - 1) // 2
    return length + 1


@numba.njit(cache=True)
def _heap_pop(heap, length):
    """Drop the top of the max-heap heap[:length]; returns the new length."""
    length -= 1
    heap[0] = heap[length]
    i = 0
    while True:
        child = 2 * i + 1
        if child + 1 < length and heap[child + 1] > heap[child]:
            child += 1
        if child >= length or heap[child] <= heap[i]:
            return length
        heap[child], heap[i] = heap[i], heap[child]
        i = child


@numba.njit(cache=True)
def _filled_windows(p, width, height, window):
    """Count pixel p in its (up to 4) 2x2 windows; returns the doubled area they gain (1 per window reaching 3 or
    4 pixels)."""
    y, x = divmod(p, width)
    gained = 0
    for wy in range(max(y - 1, 0), min(y, height - 2) + 1):
        for wx in range(max(x - 1, 0), min(x, width - 2) + 1):
            window[wy * (width - 1) + wx] += 1
            gained += window[wy * (width - 1) + wx] >= 3
    return gained


@numba.njit(cache=True)
def largest_contour_boxes(joined, peak):
    """For levels t < peak: the box of the contour with the largest cv2.contourArea (the first listed on ties),
    from the filled top-level components, i.e. the 8-connected components of joined > t.

    Areas are kept doubled (integers). The candidates tied at the largest area are a max-heap of their first
    pixels (raster index), entries dropped lazily once their component merged or grew.
    """
    height, width = joined.shape
    flat = joined.ravel()
    order, starts = _level_order(flat, peak)
    n = flat.size
    parent, size = np.arange(n), np.ones(n, np.int64)
    box = np.empty((n, 4), np.int64)
    active = np.zeros(n, np.bool_)
    first_pixel = np.arange(n)
    area = np.zeros(n, np.int64)
    window = np.zeros((height - 1) * (width - 1), np.int64)
    heap, heap_length, largest = np.empty(n, np.int64), 0, -1
    boxes = np.empty((peak, 4), np.int64)
    absorbed = np.empty(8, np.int64)
    for level in range(peak - 1, -1, -1):
        for i in range(starts[level + 1], starts[level + 2]):
            p = order[i]
            root, count = _add_foreground_pixel(p, width, height, parent, size, box, active, absorbed)
            for other in absorbed[:count]:
                first_pixel[root] = min(first_pixel[root], first_pixel[other])
                if other != root:
                    area[root] += area[other]
            first_pixel[root] = min(first_pixel[root], p)
            if p != root:
                area[root] += area[p]
            area[root] += _filled_windows(p, width, height, window)
            if area[root] > largest:
                largest, heap_length = area[root], 0
            if area[root] == largest:
                heap_length = _heap_push(heap, heap_length, first_pixel[root])
        while True:
            top = _find(parent, heap[0])
            if first_pixel[top] == heap[0] and area[top] == largest:
                break
            heap_length = _heap_pop(heap, heap_length)
        boxes[level, 0], boxes[level, 1] = box[top, 0], box[top, 1]
        boxes[level, 2], boxes[level, 3] = min(box[top, 2] + 1, width - 1), min(box[top, 3] + 1, height - 1)
    return boxes

