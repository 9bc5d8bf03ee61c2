"""How far Winograd's F(m x m, 3 x 3) strays from the exact convolution in float32, for
several choices of interpolation points: the study behind tools/caffe-patches/05-winograd.patch.

    python tools/winograd_error.py                      # the table (about 1 minute)
    python tools/winograd_error.py --channels 64 512 --seeds 2
    python tools/winograd_error.py --sets 0,-1,1 --sources     # where the error comes from
    python tools/winograd_error.py --sets 0,-1,1 --chunk 128   # channels summed as 05 does

F(m, 3) evaluates the kernel and the input tile at n = m + 2 points (n - 1 finite ones
and infinity), multiplies there, and interpolates back (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", CVPR 2016). Its matrices come from the points:
A^T[i][j] = a_j^i, G[j][k] = a_j^k / prod_{l != j} (a_j - a_l), and B^T solves the
identity that makes A^T [(G g) * (B^T d)] the correlation of g and d. Points far from 0
(Lavin's +-2 for F(4, 3)) make large entries and large float32 rounding; Barabasz,
Gusak, Gregg & Xiong ("Error analysis and improving the accuracy of Winograd convolution
for deep neural networks", ACM TOMS 2020) show that points such as +-1/2 err less.

Each case: a 3 x 3 convolution, zero padding 1, C input channels (He-scaled weights,
N(0, 2 / 9C)), ReLU-like inputs (max(0, N(0, 1))), computed the Winograd way entirely in
float32 (transforms as float32 matrix products, the sum over channels as float32 sgemm,
as the kernel does; --chunk: in sums of that many channels, as 05-winograd.patch does) and compared with the float64 direct convolution: the error is
max |y32 - y64| / max |y64|, the largest over a few seeds. The direct float32 way is
printed beside it. The suite's bound is 1e-5.
"""
import argparse
import itertools
from fractions import Fraction as Fr

import numpy as np

POINTS = {  # name: finite points (infinity is always the last)
    'F2 0,1,-1': (2, [0, 1, -1]),
    'F4 Lavin 0,1,-1,2,-2': (4, [0, 1, -1, 2, -2]),
    'F4 0,-1,1,1/2,-2': (4, [0, -1, 1, Fr(1, 2), -2]),
    'F4 0,1,-1,1/2,-1/2': (4, [0, 1, -1, Fr(1, 2), Fr(-1, 2)]),
    'F4 0,1,-1,2,-1/2': (4, [0, 1, -1, 2, Fr(-1, 2)]),
    'F4 0,1,-1,3/2,-3/2': (4, [0, 1, -1, Fr(3, 2), Fr(-3, 2)]),
    'F4 0,1/2,-1/2,1,-2': (4, [0, Fr(1, 2), Fr(-1, 2), 1, -2]),
    'F6 0,1,-1,2,-2,1/2,-1/2': (6, [0, 1, -1, 2, -2, Fr(1, 2), Fr(-1, 2)]),
    'F6 0,1,-1,1/2,-1/2,3/2,-3/2': (6, [0, 1, -1, Fr(1, 2), Fr(-1, 2), Fr(3, 2), Fr(-3, 2)]),
}


def matrices(m, points, r=3):
    """(A^T m x n, G n x r, B^T n x n) as Fractions for F(m, r) at `points` + infinity."""
    pts = [Fr(p) for p in points]
    n = m + r - 1
    assert len(pts) == n - 1
    at = [[p ** i for p in pts] + [Fr(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(pts):
        f = Fr(1)
        for q in pts[:j] + pts[j + 1:]:
            f *= p - q
        g.append([p ** k / f for k in range(r)])
    g.append([Fr(int(k == r - 1)) for k in range(r)])
    # B^T: for every i < m, k < r, l < n: sum_j A^T[i][j] G[j][k] B^T[j][l] = [l == i + k].
    # Linear in B^T's rows' columns separately: for each l a system over the n values B^T[:, l].
    coef = np.array([[float(at[i][j] * g[j][k]) for j in range(n)]
                     for i in range(m) for k in range(r)])
    bt = np.zeros((n, n))
    for l in range(n):
        rhs = np.array([float(l == i + k) for i in range(m) for k in range(r)])
        sol, _, rank, _ = np.linalg.lstsq(coef, rhs, rcond=None)
        assert rank == n and np.allclose(coef @ sol, rhs), 'no exact B^T'
        bt[:, l] = sol
    bt = [[Fr(v).limit_denominator(1000) for v in row] for row in bt]
    return at, g, bt


def winograd(x, w, m, at, g, bt, transforms=np.float32, channel_sum=np.float32, chunk=None):
    """Y (M x H x W) of x (C x H x W, padding 1) and w (M x C x 3 x 3) the Winograd way, the
    transforms (input, kernel, output) in one precision, the sum over the channels (a
    matrix product per tile point, as sgemm does it) in another, over chunks of `chunk`
    channels added one after another when given (as 05-winograd.patch does)."""
    at, g, bt = (np.array([[float(v) for v in r] for r in a], transforms) for a in (at, g, bt))
    n = m + 2
    c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    xp = np.zeros((c, th * m + 2, tw * m + 2), transforms)
    xp[:, 1:1 + h, 1:1 + wd] = x
    idx = np.arange(th)[:, None] * m + np.arange(n)[None, :]
    jdx = np.arange(tw)[:, None] * m + np.arange(n)[None, :]
    d = xp[:, idx[:, None, :, None], jdx[None, :, None, :]]  # C x th x tw x n x n tiles
    v = np.matmul(np.matmul(bt, d), bt.T)  # B^T d B, each product rounded
    v = v.transpose(3, 4, 0, 1, 2).reshape(n * n, c, th * tw).astype(channel_sum)
    u = np.matmul(np.matmul(g, w.astype(transforms)), g.T)  # G g G^T
    u = u.transpose(2, 3, 0, 1).reshape(n * n, -1, c).astype(channel_sum)
    chunk = chunk or c
    p = sum(np.matmul(u[:, :, c0:c0 + chunk], v[:, c0:c0 + chunk]) for c0 in range(0, c, chunk))
    p = p.astype(transforms).reshape(n, n, -1, th, tw).transpose(2, 3, 4, 0, 1)
    y = np.matmul(np.matmul(at, p), at.T)  # A^T P A: M x th x tw x m x m
    return y.transpose(0, 1, 3, 2, 4).reshape(-1, th * m, tw * m)[:, :h, :wd]


def direct(x, w, dtype):
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2, wd + 2), dtype)
    xp[:, 1:1 + h, 1:1 + wd] = x
    y = np.zeros((w.shape[0], h, wd), dtype)
    for i, j in itertools.product(range(3), range(3)):
        y += np.tensordot(w[:, :, i, j].astype(dtype), xp[:, i:i + h, j:j + wd], 1).astype(dtype)
    return y


def case(c, seed, size=40, outputs=32):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((c, size, size)), 0).astype(np.float32)
    w = (rng.standard_normal((outputs, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
    return x, w


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--channels', type=int, nargs='+', default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--size', type=int, default=40, help='input side (pixels)')
    ap.add_argument('--outputs', type=int, default=32, help='output channels')
    ap.add_argument('--sets', nargs='+', default=[], help='only the point sets naming one of these')
    ap.add_argument('--chunk', type=int, help='sum the channels in chunks of this many')
    ap.add_argument('--sources', action='store_true', help='also the error with only the '
                    'transforms, or only the channel sum, in float32 (the rest float64)')
    ap.add_argument('--show', action='store_true', help='print each set\'s matrices')
    args = ap.parse_args(argv)
    cases = {c: [case(c, s, args.size, args.outputs) for s in range(args.seeds)]
             for c in args.channels}
    exact = {c: [direct(x, w, np.float64) for x, w in cases[c]] for c in args.channels}
    print('%-30s' % 'max error / max |y|' + ''.join('%10s' % ('C=%d' % c) for c in args.channels))
    row = []
    for c in args.channels:
        row.append(max(np.abs(direct(x, w, np.float32) - y).max() / np.abs(y).max()
                       for (x, w), y in zip(cases[c], exact[c])))
    print('%-30s' % 'direct (float32)' + ''.join('%10.2e' % e for e in row))
    for name, (m, pts) in POINTS.items():
        if args.sets and not any(s in name for s in args.sets):
            continue
        at, g, bt = matrices(m, pts)
        if args.show:
            for label, mat in (('A^T', at), ('G', g), ('B^T', bt)):
                print(name, label, [[str(v) for v in r] for r in mat])
        ways = [('', np.float32, np.float32)]
        if args.sources:
            ways += [(' transforms32', np.float32, np.float64),
                     (' sum32', np.float64, np.float32)]
        for label, transforms, channel_sum in ways:
            row = []
            for c in args.channels:
                row.append(max(np.abs(winograd(x, w, m, at, g, bt, transforms, channel_sum,
                                               args.chunk) - y).max() / np.abs(y).max()
                               for (x, w), y in zip(cases[c], exact[c])))
            print('%-30s' % (name + label) + ''.join('%10.2e' % e for e in row))


if __name__ == '__main__':
    main()
