"""Position-embedding resizing that reproduces torch's `F.interpolate(mode='bicubic', align_corners=False)`.

MindSpore's bicubic resize uses another kernel (differences up to 0.45 on real embeddings), so the
torch kernels are rebuilt here in numpy, both of them:
- antialias=False (upstream's own interpolate_pos_embed, for RETFound and Meta checkpoints): separable cubic
  convolution, a = -0.75, half-pixel source positions, indices clamped at the borders;
- antialias=True (timm's resample_abs_pos_embed, which upstream's timm.create_model(pretrained=True) applies to
  timm's weights): Pillow-style separable filter, a = -0.5, widened by the scale when shrinking, weights
  renormalised over the taps inside the grid.
"""
import numpy as np

_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for a fractional position t (torch's upsample_bicubic2d)."""
    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix M such that M @ v resizes v like torch's bicubic, align_corners=False."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), idx), weights[:, tap])
    return matrix


def antialiased_bicubic_matrix(in_size: int, out_size: int, a: float = -0.5) -> np.ndarray:
    """(out_size, in_size) matrix of torch's bicubic resize with antialias=True, align_corners=False."""
    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        taps = np.arange(first, last)
        weights = kernel((taps - center + 0.5) * invscale)
        total = weights.sum()
        matrix[i, first:last] = weights / total if total != 0 else weights
    return matrix


def interpolate_pos_embed(pos_embed: np.ndarray, new_grid: int, num_extra_tokens: int = 1,
                          antialias: bool = False) -> np.ndarray:
    """Resize a (1, extra + g*g, D) position embedding to new_grid x new_grid; extra tokens are kept."""
    pos_embed = np.asarray(pos_embed)
    extra, tokens = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    old_grid = int(round(tokens.shape[1] ** 0.5))
    if old_grid * old_grid != tokens.shape[1]:
        raise ValueError(f"pos_embed has {tokens.shape[1]} patch positions, not a square grid")
    if old_grid == new_grid:
        return pos_embed
    dim = tokens.shape[-1]
    grid = tokens.reshape(old_grid, old_grid, dim).astype(np.float64)
    m = (antialiased_bicubic_matrix if antialias else bicubic_matrix)(old_grid, new_grid)
    resized = np.einsum("ih,hwd,jw->ijd", m, grid, m).reshape(1, new_grid * new_grid, dim)
    return np.concatenate([extra, resized.astype(pos_embed.dtype)], axis=1)


def sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position embedding (upstream util/pos_embed.py's get_2d_sincos_pos_embed), in
    float64: (grid_size**2 [+ 1], embed_dim), a zero row first for the class token. As upstream, the first half
    of the channels encodes the column (meshgrid with w first) and the second half the row."""
    if embed_dim % 4:
        raise ValueError(f"a sin-cos position embedding needs a width divisible by 4 (got {embed_dim})")
    columns, rows = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    half = embed_dim // 2
    omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))

    def encode(positions: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([encode(columns), encode(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb
