"""Plain float64 loop references of ADPF's equations, one short function per equation.

Each function computes its equation literally, one pixel, channel, head or class at a time, in
Python floats, from the tensors it is given; beside the equations, the rules the paper leaves
open that the library fixes (the maps the losses read, the ranking, maps → boxes → patches).
Nothing here calls the library's implementation (``adpf.attention``, ``adpf.rmhha``,
``adpf.losses``, ``adpf.patches``, ``adpf.evaluate``): modules passed in are only read for
their parameter tensors. The book's chapters and the tests check the library against these
functions. They are slow on purpose; give them small inputs.

Conventions: the pixels of an h×w map are flattened row-major, i = i_y · w + i_x. Inputs are
torch tensors of any float dtype (or nested lists); outputs are float64 tensors, or Python
floats for the scalar losses.
"""
from __future__ import annotations

import collections
import math

import torch
from torch import Tensor


def _floats(x):
    return x.tolist() if isinstance(x, Tensor) else x


def _tensor(values) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)  # shifted by the maximum, so exp never overflows
    e = [math.exp(v - top) for v in logits]
    return [v / sum(e) for v in e]


def conv1x1(conv, z) -> Tensor:
    """A 1×1 convolution pixel by pixel (the Q, K, V of Eq. 1 and the CA of Eq. 4).

    conv: anything with ``weight`` ``(c_out, c_in, 1, 1)`` and ``bias`` ``(c_out,)``;
    z: ``(c_in, h, w)``. Returns ``(N, c_out)``, one row per pixel.
    """
    weight = [[row[0][0] for row in out] for out in _floats(conv.weight)]
    bias, z = _floats(conv.bias), _floats(z)
    h, w = len(z[0]), len(z[0][0])
    return _tensor([[b + sum(wc * z[c][y][x] for c, wc in enumerate(row)) for row, b in zip(weight, bias)]
                    for y in range(h) for x in range(w)])


def self_attention(q, k, v) -> Tensor:
    """Eq. 1: SA = softmax(Q Kᵀ / √c_K) V, one query pixel at a time.

    q, k: ``(N, c_K)``; v: ``(N, c_V)``. Returns ``(N, c_V)``.
    """
    q, k, v = _floats(q), _floats(k), _floats(v)
    out = []
    for qi in q:
        a = _softmax([_dot(qi, kj) / math.sqrt(len(qi)) for kj in k])
        out.append([sum(a[j] * v[j][c] for j in range(len(v))) for c in range(len(v[0]))])
    return _tensor(out)


def relative_logits(q, rel_h, rel_w, h: int, w: int) -> Tensor:
    """The position terms of Eq. 2–3: m[i, j] = q_iᵀ (r^H_{j_y − i_y} + r^W_{j_x − i_x}).

    q: ``(N, c_K)``, N = h · w; rel_h ``(2h − 1, c_K)`` and rel_w ``(2w − 1, c_K)``, row
    d + h − 1 (d + w − 1) holding offset d. Returns m_h + m_w ``(N, N)``, unscaled.
    """
    q, rel_h, rel_w = _floats(q), _floats(rel_h), _floats(rel_w)
    m = [[0.0] * (h * w) for _ in range(h * w)]
    for i in range(h * w):
        iy, ix = divmod(i, w)
        for j in range(h * w):
            jy, jx = divmod(j, w)
            m[i][j] = _dot(q[i], rel_h[jy - iy + h - 1]) + _dot(q[i], rel_w[jx - ix + w - 1])
    return _tensor(m)


def relative_self_attention(q, k, v, rel_h, rel_w, h: int, w: int) -> Tensor:
    """Eq. 2–3: l_ij = q_iᵀ (k_j + r^W_{j_x − i_x} + r^H_{j_y − i_y}) / √c_K, softmax over j, Σ_j a_ij v_j.

    q, k: ``(N, c_K)``; v: ``(N, c_V)``; rel_h, rel_w as in ``relative_logits``. Returns ``(N, c_V)``.
    """
    q, k, v, rel_h, rel_w = map(_floats, (q, k, v, rel_h, rel_w))
    out = []
    for i in range(h * w):
        iy, ix = divmod(i, w)
        logits = []
        for j in range(h * w):
            jy, jx = divmod(j, w)
            key = [a + b + c for a, b, c in zip(k[j], rel_w[jx - ix + w - 1], rel_h[jy - iy + h - 1])]
            logits.append(_dot(q[i], key) / math.sqrt(len(q[i])))
        a = _softmax(logits)
        out.append([sum(a[j] * v[j][c] for j in range(h * w)) for c in range(len(v[0]))])
    return _tensor(out)


def relative_queries_keys(q, k, rel_h, rel_w, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Eq. 2–3 folded into one dot product: q̃_i · k̃_j = q_iᵀ k_j + m_h[i, j] + m_w[i, j].

    q̃_i = [q_i, (q_iᵀ r^H_{j_y − i_y}) for j_y < h, (q_iᵀ r^W_{j_x − i_x}) for j_x < w] and
    k̃_j = [k_j, onehot_h(j_y), onehot_w(j_x)]. q, k: ``(N, c_K)``; rel_h, rel_w as in
    ``relative_logits``. Returns q̃, k̃ ``(N, c_K + h + w)``.
    """
    q, k, rel_h, rel_w = map(_floats, (q, k, rel_h, rel_w))
    q_aug, k_aug = [], []
    for i in range(h * w):
        iy, ix = divmod(i, w)
        q_aug.append(q[i] + [_dot(q[i], rel_h[jy - iy + h - 1]) for jy in range(h)]
                     + [_dot(q[i], rel_w[jx - ix + w - 1]) for jx in range(w)])
        k_aug.append(k[i] + [float(jy == iy) for jy in range(h)] + [float(jx == ix) for jx in range(w)])
    return _tensor(q_aug), _tensor(k_aug)


def channel_weights(ca, fc1, fc2) -> Tensor:
    """Eq. 4: w_CA = σ(W_FC2 δ(W_FC1 δ(maxpool(CA)))), δ = ReLU, σ = the logistic sigmoid.

    ca: the projected CA ``(N, c_V)`` (``conv1x1`` of the head input); fc1, fc2: anything with
    ``weight`` and ``bias`` (the two fully connected layers). Returns ``(c_V,)``.
    """
    ca = _floats(ca)
    pooled = [max(pixel[c] for pixel in ca) for c in range(len(ca[0]))]  # max over the map

    def dense(layer, vec):
        return [b + _dot(row, vec) for row, b in zip(_floats(layer.weight), _floats(layer.bias))]

    hidden = dense(fc1, [max(0.0, p) for p in pooled])
    out = dense(fc2, [max(0.0, u) for u in hidden])
    return _tensor([1 / (1 + math.exp(-o)) for o in out])


def hybrid_map(sa, w_ca, h: int, w: int) -> Tensor:
    """Eq. 5: HA = Σ_c SA_c · w_CA,c, pixel by pixel. sa ``(N, c_V)``, w_ca ``(c_V,)``; returns ``(h, w)``."""
    sa, w_ca = _floats(sa), _floats(w_ca)
    return _tensor([[_dot(sa[y * w + x], w_ca) for x in range(w)] for y in range(h)])


def hybrid_attention_head(head, z) -> Tensor:
    """Eq. 1–5 for one head on its input z ``(c_in, h, w)``: the map HA ``(h, w)``.

    head: a ``HybridAttention`` (read for its parameters only). Without a channel branch
    (the ADPF w/SA ablation) the channels are summed with equal weight.
    """
    sa_module = head.self_attention
    h, w = z.shape[-2:]
    q, k, v = (conv1x1(conv, z) for conv in (sa_module.query, sa_module.key, sa_module.value))
    sa = relative_self_attention(q, k, v, sa_module.rel_h, sa_module.rel_w, h, w)
    ca_module = head.channel_attention
    if ca_module is None:
        return hybrid_map(sa, [1.0] * sa.shape[1], h, w)
    w_ca = channel_weights(conv1x1(ca_module.project, z), ca_module.fc1, ca_module.fc2)
    return hybrid_map(sa, w_ca, h, w)


def rmhha(heads, scales, x) -> tuple[Tensor, Tensor]:
    """Eq. 6: head k on the k-th channel slice of x, its map scaled by a_k.

    heads: n ``HybridAttention`` heads; scales: a ``(n,)``; x: ``(n · c_head, h, w)``.
    Returns the maps HA_k and the scaled maps HA_k · a_k, both ``(n, h, w)``, in head order.
    """
    c_head = x.shape[0] // len(heads)
    maps = [hybrid_attention_head(head, x[k * c_head:(k + 1) * c_head]) for k, head in enumerate(heads)]
    scaled = [m * a for m, a in zip(maps, _floats(scales))]
    return torch.stack(maps), torch.stack(scaled)


def ranked_maps(maps, scales, rank_by: str = "value") -> tuple[list[int], Tensor]:
    """The ranking of Eq. 6: head order by a_k (``"value"``) or |a_k| (``"abs"``), largest first,
    ties in head order; and the ranked maps M_r = HA_{order[r]} · sign(a_{order[r]}).

    maps: HA ``(B, n, h, w)`` in head order; scales: a ``(n,)``. Returns the order (n head
    indices) and M ``(B, n, h, w)``.
    """
    scales = _floats(scales)
    key = [abs(a) for a in scales] if rank_by == "abs" else scales
    order = sorted(range(len(scales)), key=lambda k: -key[k])  # sorted() is stable: ties keep head order
    sign = [(a > 0) - (a < 0) for a in scales]
    return order, _tensor([[[[sign[k] * v for v in row] for row in image[k]] for k in order]
                           for image in _floats(maps)])


def normalize_maps(maps) -> Tensor:
    """Each map shifted to a minimum of zero and divided by its sum (a flat map: uniform) ``(B, n, h, w)``."""
    out = []
    for image in _floats(maps):
        heads = []
        for m in image:
            low = min(min(row) for row in m)
            total = sum(v - low for row in m for v in row)
            size = len(m) * len(m[0])
            heads.append([[(v - low) / total if total > 0 else 1 / size for v in row] for row in m])
        out.append(heads)
    return _tensor(out)


def unit_maps(maps) -> Tensor:
    """The maps Eq. 7 reads: each shifted to a minimum of zero and scaled to unit L2 norm ``(B, n, h, w)``.

    A flat map (no contrast) becomes the uniform unit map 1/√(h·w).
    """
    out = []
    for image in _floats(maps):
        heads = []
        for m in image:
            low = min(min(row) for row in m)
            norm = math.sqrt(sum((v - low) ** 2 for row in m for v in row))
            size = len(m) * len(m[0])
            heads.append([[(v - low) / norm if norm > 0 else size ** -0.5 for v in row] for row in m])
        out.append(heads)
    return _tensor(out)


def head_similarity(maps) -> Tensor:
    """The cosine of every pair of heads' shifted maps, the mean over the batch ``(n, n)``.

    maps ``(B, n, h, w)``; entry (n1, n2) is Σ_{h,w} U_n1 · U_n2 of the ``unit_maps`` U.
    """
    units = _floats(unit_maps(maps))
    n = len(units[0])
    return _tensor([[sum(sum(_dot(ra, rb) for ra, rb in zip(image[n1], image[n2])) for image in units) / len(units)
                     for n2 in range(n)] for n1 in range(n)])


def diversity_loss(maps) -> float:
    """Eq. 7: Σ_{n1≠n2} Σ_{h,w} HA_n1(h, w) · HA_n2(h, w), every ordered pair; the mean over the batch.

    maps: ``(B, n, h, w)``.
    """
    maps = _floats(maps)
    total = 0.0
    for image in maps:
        for n1, a in enumerate(image):
            for n2, b in enumerate(image):
                if n1 != n2:
                    total += sum(_dot(row_a, row_b) for row_a, row_b in zip(a, b))
    return total / len(maps)


def age_distribution(logits, mode: str = "as_written") -> Tensor:
    """Eq. 9: o'_p = max(0, o_p) / Σ_t max(0, o_t), after a softmax (``"as_written"``) or on the raw outputs (``"raw"``).

    A row with no positive entry becomes the uniform distribution. logits ``(B, q)`` → ``(B, q)``.
    """
    rows = []
    for o in _floats(logits):
        o = _softmax(o) if mode == "as_written" else o
        kept = [max(0.0, v) for v in o]
        rows.append([v / sum(kept) for v in kept] if sum(kept) > 0 else [1 / len(o)] * len(o))
    return _tensor(rows)


def expected_age(probs, ages) -> Tensor:
    """Eq. 10: E = Σ_p o'_p · g_p. probs ``(B, q)``, ages g ``(q,)`` → ``(B,)``."""
    return _tensor([_dot(p, _floats(ages)) for p in _floats(probs)])


def age_std(probs, ages) -> Tensor:
    """The standard deviation of the distribution of Eq. 9–10: √(Σ_p o'_p (g_p − E)²). probs ``(B, q)``, ages ``(q,)`` → ``(B,)``."""
    g, out = _floats(ages), []
    for p in _floats(probs):
        mean = _dot(p, g)
        out.append(math.sqrt(sum(pp * (gp - mean) ** 2 for pp, gp in zip(p, g))))
    return _tensor(out)


def mae_loss(predicted, target) -> float:
    """Eq. 11: L_MAE = (1/b) Σ_b |E_b − GT_b|. Both ``(B,)``."""
    predicted, target = _floats(predicted), _floats(target)
    return sum(abs(e - gt) for e, gt in zip(predicted, target)) / len(target)


def gaussian_label_distribution(true_ages, ages, sigma: float) -> Tensor:
    """The target P of Eq. 12: P(p) = exp(−(g_p − GT)² / 2σ²) / Σ_t exp(−(g_t − GT)² / 2σ²).

    true_ages ``(B,)``, ages g ``(q,)`` → ``(B, q)``.
    """
    g = _floats(ages)
    return _tensor([_softmax([-((gp - gt) ** 2) / (2 * sigma ** 2) for gp in g]) for gt in _floats(true_ages)])


def log_age_distribution(logits, mode: str = "as_written", floor: float = 1e-8) -> Tensor:
    """log o' of Eq. 9, what the KL of Eq. 12 reads ``(B, q)``.

    ``"as_written"``: log softmax, o_p − max − log Σ_t exp(o_t − max), exact however
    saturated; ``"raw"``: log max(o'_p, ``floor``) of the raw-output distribution.
    """
    rows = []
    for o in _floats(logits):
        if mode == "as_written":
            top = max(o)
            log_z = top + math.log(sum(math.exp(v - top) for v in o))
            rows.append([v - log_z for v in o])
        else:
            rows.append([math.log(max(p, floor)) for p in _floats(age_distribution([o], "raw"))[0]])
    return _tensor(rows)


def kl_loss(target, log_probs) -> float:
    """Eq. 12: L_KL = Σ_p P(p) log(P(p) / P'(p)) = Σ_p P(p) (log P(p) − log P'(p)), the mean over the batch.

    Terms with P(p) = 0 are 0. target ``(B, q)``, log_probs log P' ``(B, q)``.
    """
    total = 0.0
    for t_row, lp_row in zip(_floats(target), _floats(log_probs)):
        total += sum(t * (math.log(t) - lp) for t, lp in zip(t_row, lp_row) if t > 0)
    return total / len(_floats(target))


def age_estimation_loss(logits, true_ages, ages, sigma: float, mode: str = "as_written") -> dict[str, float]:
    """Eq. 13: L_AE = L_MAE + L_KL, from the network outputs ``(B, q)`` and the true ages ``(B,)``.

    ages: the classes g ``(q,)``. Returns ``{"total", "mae", "kl"}``.
    """
    mae = mae_loss(expected_age(age_distribution(logits, mode), ages), true_ages)
    kl = kl_loss(gaussian_label_distribution(true_ages, ages, sigma), log_age_distribution(logits, mode))
    return {"total": mae + kl, "mae": mae, "kl": kl}


def cumulative_score(errors, v_max: int) -> Tensor:
    """CS(v) for v = 0..v_max: the share of estimates within v years of the truth ``(v_max + 1,)``.

    The paper's second score beside the MAE (it has no equation number).
    """
    errors = _floats(errors)
    return _tensor([sum(abs(e) <= v for e in errors) / len(errors) for v in range(v_max + 1)])


def bilinear_resize(m, size: int) -> Tensor:
    """Step 1 of the box rule: a map ``(h, w)`` resized bilinearly to ``(size, size)``.

    Half-pixel centres (output pixel y reads the input at s = (y + ½) · h / size − ½), clamped
    to the border, between its two neighbours in each direction.
    """
    m = _floats(m)
    h, w = len(m), len(m[0])

    def source(i, n_in):
        s = min(max((i + 0.5) * n_in / size - 0.5, 0.0), n_in - 1.0)
        i0 = int(s)
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = []
    for y in range(size):
        y0, y1, ty = source(y, h)
        row = []
        for x in range(size):
            x0, x1, tx = source(x, w)
            top = m[y0][x0] * (1 - tx) + m[y0][x1] * tx
            bottom = m[y1][x0] * (1 - tx) + m[y1][x1] * tx
            row.append(top * (1 - ty) + bottom * ty)
        out.append(row)
    return _tensor(out)


def map_box(m, size: int, min_frac: float, max_frac: float, threshold: float | str = "mean",
            baseline: str = "min") -> list[int]:
    """The box ``[x0, y0, x1, y1]`` (x1, y1 exclusive) of one finite map ``(h, w)``: steps 1–4 of the rule.

    1. resize (``bilinear_resize``) and normalise from the baseline (``"min"``: the smallest
    value; ``"median"``: the lower of the two middle values of the sorted pixels) to the peak;
    2. keep the pixels at or above
    ``threshold`` (``"mean"``: the normalised map's mean); 3. a breadth-first search from the
    peak (the first maximum, row-major) over the 8 neighbours kept; 4. a square of side
    max(width, height) clamped to [min_frac, max_frac] · size, centred on the region, moved
    just enough to hold the peak and stay inside the image. A flat map (spread at most 1e-5 of
    its largest magnitude) gets the largest square, centred.
    """
    up = _floats(bilinear_resize(m, size))
    values = [v for row in up for v in row]
    hi = max(values)
    lo = min(values) if baseline == "min" else sorted(values)[(len(values) - 1) // 2]
    if hi - lo <= 1e-5 * max(abs(hi), abs(lo)):  # flat: the peak does not rise above the baseline
        inside = [[True] * size for _ in range(size)]
        py = px = size // 2
    else:
        norm = [[(v - lo) / (hi - lo) for v in row] for row in up]
        level = sum(v for row in norm for v in row) / size ** 2 if threshold == "mean" else float(threshold)
        inside = [[v >= level for v in row] for row in norm]
        best = max(v for row in norm for v in row)
        py, px = next((y, x) for y in range(size) for x in range(size) if norm[y][x] == best)
    seen, queue = {(py, px)}, collections.deque([(py, px)])
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                q = (y + dy, x + dx)
                if 0 <= q[0] < size and 0 <= q[1] < size and q not in seen and inside[q[0]][q[1]]:
                    seen.add(q)
                    queue.append(q)
    ys, xs = [p[0] for p in seen], [p[1] for p in seen]
    min_side = max(1, round(min_frac * size))
    max_side = max(min_side, round(max_frac * size))
    side = min(max(max(max(xs) + 1 - min(xs), max(ys) + 1 - min(ys)), min_side), max_side)

    def place(lo, hi, p):
        start = (lo + hi - side) // 2
        start = min(max(start, p - side + 1), p)
        return min(max(start, 0), size - side)

    x0, y0 = place(min(xs), max(xs) + 1, px), place(min(ys), max(ys) + 1, py)
    return [x0, y0, x0 + side, y0 + side]


def crop_patch(image, box, p: int) -> Tensor:
    """One patch ``(C, p, p)`` of an image ``(C, H, W)``: sample (i, j) read bilinearly at
    x = x0 + (j + ½)(x1 − x0)/p − ½, y = y0 + (i + ½)(y1 − y0)/p − ½, clamped to the image."""
    img = _floats(image)
    c, h, w = len(img), len(img[0]), len(img[0][0])
    x0, y0, x1, y1 = _floats(box)

    def at(ch, y, x):
        y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
        ya, xa = int(y), int(x)
        yb, xb = min(ya + 1, h - 1), min(xa + 1, w - 1)
        ty, tx = y - ya, x - xa
        top = img[ch][ya][xa] * (1 - tx) + img[ch][ya][xb] * tx
        return top * (1 - ty) + (img[ch][yb][xa] * (1 - tx) + img[ch][yb][xb] * tx) * ty

    return _tensor([[[at(ch, y0 + (i + 0.5) * (y1 - y0) / p - 0.5, x0 + (j + 0.5) * (x1 - x0) / p - 0.5)
                      for j in range(p)] for i in range(p)] for ch in range(c)])
