"""The boxes of cv2.findContours(u > t, RETR_TREE, CHAIN_APPROX_SIMPLE) at every level t at once (numba kernels).

What OpenCV returns at level t, and how it is tracked here with union-find over the pixels sorted by level:
- one outer contour per 8-connected foreground component; its box is the component's pixel box (x1, y1 one past the
  last pixel, clipped to the image). Components only grow and merge as t falls: one descending sweep.
- one hole contour per 4-connected background component not connected to the image border; its contour runs
  through the foreground pixels around it, so its box is the hole's pixel box grown by one pixel (then x1, y1 one
  past, clipped). Background components only grow and merge as t rises: one ascending sweep.
- the largest cv2.contourArea is an outer contour of a top-level component (a hole's polygon lies inside its
  parent's, an island's inside its hole's), and OpenCV lists top-level contours last-found first, so ties go to the
  component whose first pixel in raster order comes last. The area of an outer contour through pixel centres is
  Q4 + Q3 / 2, Qk counting the 2x2 windows with k pixels in the filled component (the component and all it
  encloses). A pixel is in a filled top-level component at level t iff it is not yet in the background connected
  to the border, i.e. iff t < joined, the level at which it joins that background (from the ascending sweep):
  the 8-connected components of joined > t are the filled top-level components, swept like the foreground.
- the other outer contours are those of islands (components inside holes); there are none at level t iff the
  filled top-level components are as many as all components of u > t: its Euler number (components - holes, from
  the patterns of its 2x2 windows) plus its holes, both kept in the ascending sweep.

Images are padded by one pixel and indexed flat; parent -1 marks a pixel not yet added. "Hits" of a box: how many
of the IoU thresholds (ascending) its best IoU with a ground-truth box reaches.

The entry points called from Python (`hole_sweep`, `outer_sweep`) release the GIL (nogil): threads score maps at
once. They touch no shared state, only their arguments and the constant tables below.
"""

import numba
import numpy as np

_OUTSIDE = 0  # in the background sweep, the padding is one set, rooted at the padded image's first pixel


@numba.njit(cache=True)
def _padded(values, fill):
    """values (H, W) as a flat int64 array of the (H + 2, W + 2) image with a `fill` border."""
    height, width = values.shape
    padded = np.full((height + 2) * (width + 2), fill, np.int64)
    for y in range(height):
        for x in range(width):
            padded[(y + 1) * (width + 2) + x + 1] = values[y, x]
    return padded


@numba.njit(cache=True)
def _unpadded(flat, height, width):
    """The (H, W) inside of a flat padded image."""
    values = np.empty((height, width), flat.dtype)
    for y in range(height):
        for x in range(width):
            values[y, x] = flat[(y + 1) * (width + 2) + x + 1]
    return values


@numba.njit(cache=True)
def _level_order(values, top):
    """Indices sorted by value (counting sort) and where each value 0..top starts in that order."""
    counts = np.zeros(top + 2, np.int64)
    for v in values:
        counts[v + 1] += 1
    starts = np.cumsum(counts)
    fill = starts[:-1].copy()
    order = np.empty(values.size, np.int64)
    for p in range(values.size):
        order[fill[values[p]]] = p
        fill[values[p]] += 1
    return order, starts


# The 8 neighbours of a pixel in circular order (N, NE, E, SE, S, SW, W, NW): each is adjacent to the next. A
# "pattern" has bit k set when neighbour k is added. The four 2x2 windows holding a pixel, as their corners
# (top-left, top-right, bottom-left, bottom-right; None: the pixel itself).
_WINDOWS = ((7, 0, 6, None), (0, 1, None, 2), (6, None, 5, 4), (None, 2, 4, 3))
_EULER_WEIGHTS = (0, 1, 1, 0, 1, 0, -2, -1, 1, -2, 0, -1, 0, -1, -1, 0)  # 4 x Euler number, per window pattern


def _neighbour_tables(connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pattern: how many added neighbours need a find, and which. With 8-connectivity a run of consecutive added
    neighbours is one set, so only its first is looked up; with 4-connectivity every added N, E, S, W is."""
    finds, firsts = np.zeros(256, np.int64), np.zeros((256, 4), np.int64)
    for pattern in range(256):
        added = [pattern >> k & 1 for k in range(8)]
        if connectivity == 4:
            chosen = [k for k in (0, 2, 4, 6) if added[k]]
        else:
            chosen = [k for k in range(8) if added[k] and not added[k - 1]] or [k for k in range(8) if added[k]][:1]
        finds[pattern], firsts[pattern, : len(chosen)] = len(chosen), chosen
    return finds, firsts


def _window_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per pattern, for the pixel's four 2x2 windows: the doubled contour area gained by adding it (one per window
    reaching 3 or 4 added pixels), and the change of 4 x the Euler number of the pixels not added when it stops
    being one (Gray's bit-quads: 4 E = Q1 - Q3 - 2 QD)."""
    area_gain, euler_change = np.zeros(256, np.int64), np.zeros(256, np.int64)
    for pattern in range(256):
        for corners in _WINDOWS:
            others = [pattern >> k & 1 for k in corners if k is not None]
            area_gain[pattern] += sum(others) >= 2
            kept = sum(1 << i for i, k in enumerate(corners) if k is not None and not pattern >> k & 1)
            itself = 1 << corners.index(None)
            euler_change[pattern] += _EULER_WEIGHTS[kept] - _EULER_WEIGHTS[kept | itself]
    return area_gain, euler_change


_RING_FINDS, _RING_FIRSTS = _neighbour_tables(8)
_CROSS_FINDS, _CROSS_FIRSTS = _neighbour_tables(4)
_AREA_GAIN, _EULER_CHANGE = _window_tables()


@numba.njit(cache=True)
def _ring(width):
    """Offsets of the 8 neighbours in the padded image, in circular order."""
    row = width + 2
    return np.array([-row, -row + 1, 1, row + 1, row, row - 1, -1, -row - 1])


@numba.njit(cache=True, inline="always")
def _pattern(parent, q, ring):
    """Bit k set when neighbour k of q is added (parent >= 0)."""
    pattern = 0
    for k in range(8):
        pattern |= (parent[q + ring[k]] >= 0) << k
    return pattern


@numba.njit(cache=True, inline="always")
def _find(parent, p):
    while parent[p] != p:
        parent[p] = parent[parent[p]]
        p = parent[p]
    return p


@numba.njit(cache=True, inline="always")
def _neighbour_roots(parent, q, ring, pattern, finds, firsts, roots):
    """The distinct roots of the added neighbours of q that `finds` and `firsts` (see `_neighbour_tables`) point to
    for this pattern, into roots; returns how many."""
    count = 0
    for j in range(finds[pattern]):
        root = _find(parent, parent[q + ring[firsts[pattern, j]]])
        if not _listed(roots, count, root):
            roots[count] = root
            count += 1
    return count


@numba.njit(cache=True)
def _listed(roots, count, root):
    for j in range(count):
        if roots[j] == root:
            return True
    return False


@numba.njit(cache=True, inline="always")
def _absorb(parent, size, box, q, x, y, roots, count):
    """Add pixel q (image position x, y) and join it with the sets roots[:count] under the largest; returns that
    root and whether its box grew (always for a new set)."""
    if count == 0:
        parent[q], size[q] = q, 1
        box[q, 0], box[q, 1], box[q, 2], box[q, 3] = x, y, x, y
        return q, True
    if count == 1:
        return roots[0], _join(parent, size, box, q, x, y, roots[0])
    root = roots[0]
    for j in range(1, count):
        if size[roots[j]] > size[root]:
            root = roots[j]
    x0, y0, x1, y1 = box[root, 0], box[root, 1], box[root, 2], box[root, 3]
    for j in range(count):
        r = roots[j]
        if r != root:
            parent[r] = root
            size[root] += size[r]
            x0, y0, x1, y1 = min(x0, box[r, 0]), min(y0, box[r, 1]), max(x1, box[r, 2]), max(y1, box[r, 3])
    grew = _join(parent, size, box, q, x, y, root)
    grew |= x0 < box[root, 0] or y0 < box[root, 1] or x1 > box[root, 2] or y1 > box[root, 3]
    box[root, 0], box[root, 1] = min(x0, box[root, 0]), min(y0, box[root, 1])
    box[root, 2], box[root, 3] = max(x1, box[root, 2]), max(y1, box[root, 3])
    return root, grew


@numba.njit(cache=True, inline="always")
def _join(parent, size, box, q, x, y, root):
    """Add pixel q (image position x, y) to the set `root`; returns whether its box grew."""
    parent[q] = root
    size[root] += 1
    grew = False
    if x < box[root, 0]:
        box[root, 0], grew = x, True
    if y < box[root, 1]:
        box[root, 1], grew = y, True
    if x > box[root, 2]:
        box[root, 2], grew = x, True
    if y > box[root, 3]:
        box[root, 3], grew = y, True
    return grew


@numba.njit(cache=True)
def _hits(x0, y0, x1, y1, gt, iou_thresholds):
    """How many IoU thresholds the box's best IoU with a GT box reaches (inclusive pixels, as `wsol.box_iou`)."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(gt.shape[0]):
        inter_w = max(0.0, min(x1, gt[g, 2]) - max(x0, gt[g, 0]) + 1)
        inter_h = max(0.0, min(y1, gt[g, 3]) - max(y0, gt[g, 1]) + 1)
        inter = inter_w * inter_h
        union = area + (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1) - inter
        if union > 0:
            best = max(best, inter / union)
    hits = 0
    for threshold in iou_thresholds:
        hits += best >= threshold
    return hits


@numba.njit(cache=True, inline="always")
def _count(live, hits, sign):
    """live[k]: how many current contours reach k + 1 thresholds or more."""
    for k in range(hits):
        live[k] += sign


@numba.njit(cache=True)
def _most_hits(live):
    most = 0
    for k in range(live.size):
        if live[k] > 0:
            most = k + 1
    return most


@numba.njit(cache=True)
def _union_find(size):
    """parent (-1: not added yet), set sizes and pixel boxes for `size` pixels."""
    return np.full(size, -1, np.int32), np.ones(size, np.int32), np.empty((size, 4), np.int32)


@numba.njit(cache=True)
def _outer_hits(box, root, width, height, gt, iou_thresholds):
    """Hits of the outer contour of the foreground component `root`."""
    x1, y1 = min(box[root, 2] + 1, width - 1), min(box[root, 3] + 1, height - 1)
    return _hits(box[root, 0], box[root, 1], x1, y1, gt, iou_thresholds)


@numba.njit(cache=True)
def _hole_hits(box, root, width, height, gt, iou_thresholds):
    """Hits of the contour around the hole `root`: through the foreground pixels next to it."""
    x1, y1 = min(box[root, 2] + 2, width - 1), min(box[root, 3] + 2, height - 1)
    return _hits(box[root, 0] - 1, box[root, 1] - 1, x1, y1, gt, iou_thresholds)


@numba.njit(cache=True, nogil=True)
def hole_sweep(u, peak, gt, iou_thresholds):
    """For levels t < peak: the most hits of any hole contour of u > t and the number of components of u > t
    (Euler number + holes); and `joined`, the level at which each pixel joins the background connected to the
    image border (peak where not below peak)."""
    height, width = u.shape
    row = width + 2
    values = _padded(u, 256)
    order, starts = _level_order(values, 256)
    n = values.size
    parent, size, box = _union_find(n)
    parent[values == 256] = _OUTSIDE
    first, last, following = np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32), np.full(n, -1, np.int32)
    joined = np.full(n, peak, np.uint8)
    hits, live, most = np.zeros(n, np.int8), np.zeros(len(iou_thresholds), np.int64), np.zeros(peak, np.int64)
    components, holes, euler = np.zeros(peak, np.int64), 0, 4  # 4 x the Euler number: the whole image, 1
    ring, roots = _ring(width), np.empty(4, np.int32)
    for level in range(peak):
        for i in range(starts[level], starts[level + 1]):
            q = order[i]
            pattern = _pattern(parent, q, ring)
            euler += _EULER_CHANGE[pattern]
            if _beside_border(parent, q, ring, pattern):
                parent[q], joined[q] = _OUTSIDE, level
                continue
            count = _neighbour_roots(parent, q, ring, pattern, _CROSS_FINDS, _CROSS_FIRSTS, roots)
            if _listed(roots, count, _OUTSIDE):
                _join_border(parent, hits, live, first, following, joined, q, roots, count, level)
                holes -= count - 1
                continue
            root, grew = _absorb(parent, size, box, q, q % row - 1, q // row - 1, roots, count)
            holes += 1 - count
            for j in range(count):
                r = roots[j]
                if r != root:
                    _count(live, hits[r], -1)
                    following[last[root]], last[root] = first[r], last[r]
            if root != q:
                following[last[root]], last[root] = q, q
            if grew:
                if root != q:
                    _count(live, hits[root], -1)
                hits[root] = _hole_hits(box, root, width, height, gt, iou_thresholds)
                _count(live, hits[root], 1)
        most[level], components[level] = _most_hits(live), euler // 4 + holes
    return most, components, _unpadded(joined, height, width)


@numba.njit(cache=True, inline="always")
def _beside_border(parent, q, ring, pattern):
    """Whether q has added 4-neighbours and all are linked straight to the border background (the common case)."""
    for j in range(_CROSS_FINDS[pattern]):
        if parent[q + ring[_CROSS_FIRSTS[pattern, j]]] != _OUTSIDE:
            return False
    return _CROSS_FINDS[pattern] > 0


@numba.njit(cache=True)
def _join_border(parent, hits, live, first, following, joined, q, roots, count, level):
    """Pixel q and the holes roots[:count] join the border background at `level`."""
    parent[q], joined[q] = _OUTSIDE, level
    for j in range(count):
        r = roots[j]
        if r == _OUTSIDE:
            continue
        _count(live, hits[r], -1)
        parent[r] = _OUTSIDE
        p = first[r]
        while p >= 0:
            joined[p] = level
            p = following[p]


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


@numba.njit(cache=True, nogil=True)
def outer_sweep(values, peak, gt, iou_thresholds):
    """For levels t < peak, from the 8-connected components of values > t: the most hits of their outer contours,
    their number, and the box and hits of the one with the largest contour area, ties to the one whose first pixel
    comes last. Given `joined` (filled top-level components), that is the contour cv2.contourArea ranks first.

    Areas are doubled (integers). The components tied at the largest area are a max-heap of their first pixels,
    entries dropped lazily once their component has merged or grown.
    """
    height, width = values.shape
    row = width + 2
    padded = _padded(values, 0)
    order, starts = _level_order(padded, peak)
    n = padded.size
    parent, size, box = _union_find(n)
    first_pixel, area = np.arange(n, dtype=np.int32), np.zeros(n, np.int32)
    heap, heap_length, largest = np.empty(n, np.int32), 0, -1
    hits, live, most = np.zeros(n, np.int8), np.zeros(len(iou_thresholds), np.int64), np.zeros(peak, np.int64)
    components, alive = np.zeros(peak, np.int64), 0
    largest_boxes, largest_hits = np.empty((peak, 4), np.int64), np.zeros(peak, np.int64)
    ring, roots = _ring(width), np.empty(8, np.int32)
    for level in range(peak - 1, -1, -1):
        for i in range(starts[level + 1], starts[level + 2]):
            q = order[i]
            pattern = _pattern(parent, q, ring)
            count = _neighbour_roots(parent, q, ring, pattern, _RING_FINDS, _RING_FIRSTS, roots)
            root, grew = _absorb(parent, size, box, q, q % row - 1, q // row - 1, roots, count)
            alive += 1 - count
            for j in range(count):
                r = roots[j]
                if r != root:
                    area[root] += area[r]
                    first_pixel[root] = min(first_pixel[root], first_pixel[r])
                    _count(live, hits[r], -1)
            first_pixel[root] = min(first_pixel[root], q)
            area[root] += _AREA_GAIN[pattern]
            if area[root] > largest:
                largest, heap_length = area[root], 0
            if area[root] == largest:
                heap_length = _heap_push(heap, heap_length, first_pixel[root])
            if grew:
                if root != q:
                    _count(live, hits[root], -1)
                hits[root] = _outer_hits(box, root, width, height, gt, iou_thresholds)
                _count(live, hits[root], 1)
        most[level], components[level] = _most_hits(live), alive
        top = _find(parent, heap[0])
        while first_pixel[top] != heap[0] or area[top] != largest:
            heap_length = _heap_pop(heap, heap_length)
            top = _find(parent, heap[0])
        largest_boxes[level, 0], largest_boxes[level, 1] = box[top, 0], box[top, 1]
        largest_boxes[level, 2] = min(box[top, 2] + 1, width - 1)
        largest_boxes[level, 3] = min(box[top, 3] + 1, height - 1)
        largest_hits[level] = hits[top]
    return most, components, largest_boxes, largest_hits
