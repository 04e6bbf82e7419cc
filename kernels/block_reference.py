"""The residual block's fused passes (fastsca/backbone.py) in PyTorch: what each Triton pass computes.

A block is y1 = conv3x3(x), y2 = conv3x3(relu(bn1(y1))), ys = conv1x1(x) and
out = maxpool(relu(bn2(y2) [-> attention] + bn_s(ys))). In training mode a BatchNorm is, per channel,
an affine map z = y * scale + shift with scale = gamma * rstd and shift = beta - mean * scale, where mean
and rstd come from the batch's sums of y and y * y. So every pass here takes the BatchNorms as
per-channel (scale, shift) vectors and hands back the per-channel sums their gradients need; the
BatchNorm algebra between them (mean, variance, running statistics) is a few C-sized torch ops.

Conventions every pass keeps (and its Triton kernel is checked against):
- maps are (B, C, T, F) in any memory format, and come out in the dtype and memory format of the map
  they are made from; weights are nn.Conv2d's (C_out, C_in, k, k) in any dtype, used in the map's dtype;
- convolutions are stride 1 with 'same' zero padding (k // 2), accumulated in fp32;
- every per-channel sum is fp32, taken over (B, T, F) of fp32 values (for a convolution: its fp32
  accumulator, before the output is rounded to the map's dtype);
- a prologue activation a = relu(x * scale + shift) is computed in fp32 and rounded to the map's dtype
  (what a tensor core reads); the zero padding is applied after it (padding is zero in a, not in x);
- a convolution's backward takes dL/dy in two parts when y's sums feed a BatchNorm: the map d_y reaching y
  directly, and the gradients d_sum, d_squares of the sums (sum y, sum y*y) the forward returned; the full
  gradient is `grad_with_sums`, formed as the backward passes read it (never written out);
- max-pool windows are (pt, pf), floor division like nn.MaxPool2d (a remainder row or column is dropped),
  and the argmax is the int8 position dt * pf + df of the first maximum in row-major order.
"""
import torch
import torch.nn.functional as F

SUM_DIMS = (0, 2, 3)
"""The (B, T, F) dimensions a per-channel sum runs over."""


def memory_format(template: torch.Tensor) -> torch.memory_format:
    """channels_last for a map stored NHWC, else contiguous (one rule for every pass's outputs). A one-channel
    map (block 1's input) is both, and torch keeps its strides whichever layout it is asked for: its outputs
    are channels_last, the layout the Triton kernels compute in (an NCHW output would cost a conversion)."""
    if template.is_contiguous(memory_format=torch.channels_last) and (
            not template.is_contiguous() or template.shape[1] == 1):
        return torch.channels_last
    return torch.contiguous_format


def _like(value: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """value in template's dtype and memory format."""
    return value.to(template.dtype).contiguous(memory_format=memory_format(template))


def _channel(vector: torch.Tensor) -> torch.Tensor:
    """A per-channel fp32 vector shaped to broadcast over (B, C, T, F)."""
    return vector.float().view(1, -1, 1, 1)


def activate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(x * scale + shift) per channel, computed in fp32 and rounded to x's dtype."""
    return _like(torch.relu(x.float() * _channel(scale) + _channel(shift)), x)


def conv_forward(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None,
                 in_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, sum y, sum y*y): y = conv(a, weight), a = activate(x, in_scale, in_shift) when a prologue is
    given, else x; the sums per output channel from the fp32 accumulator."""
    a = x if in_scale is None else activate(x, in_scale, in_shift)
    y32 = F.conv2d(a.float(), weight.to(x.dtype).float(), padding=weight.shape[-1] // 2)
    return _like(y32, x), y32.sum(SUM_DIMS), y32.square().sum(SUM_DIMS)


def grad_with_sums(d_y: torch.Tensor, y: torch.Tensor, d_sum: torch.Tensor, d_squares: torch.Tensor) -> torch.Tensor:
    """dL/dy in full from its parts: d_y + 2 y * d_squares + d_sum per channel (d sum y / dy = 1,
    d sum y*y / dy = 2y), in fp32, rounded to y's dtype in y's memory format."""
    return _like(d_y.float() + y.float() * _channel(2 * d_squares) + _channel(d_sum), y)


def _full_grad(grad: torch.Tensor, sums_grad: tuple | None) -> torch.Tensor:
    """grad itself, or grad_with_sums(grad, *sums_grad) when the sums' gradients (y, d_sum, d_squares) are given."""
    return grad if sums_grad is None else grad_with_sums(grad, *sums_grad)


def conv_input_grad(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor | None = None,
                    in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                    sums_grad: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The gradient of conv_forward's y with respect to its input, from `grad` (dL/dy; with sums_grad = (y,
    d_sum, d_squares), dL/dy is grad_with_sums(grad, y, d_sum, d_squares)).

    dA = conv_transpose(grad, weight) (the data gradient at a). Without a prologue: (dA, None, None).
    With one (x, in_scale, in_shift as the forward had them): g = dA * (x * in_scale + in_shift > 0)
    (the gradient at the affine map's output), and (g * in_scale, sum g * x, sum g): the gradients of x,
    in_scale and in_shift. dx comes out in grad's dtype and memory format."""
    grad = _full_grad(grad, sums_grad)
    a_shape = (grad.shape[0], weight.shape[1], grad.shape[2], grad.shape[3])
    d_a = torch.nn.grad.conv2d_input(a_shape, weight.to(grad.dtype).float(), grad.float(),
                                     padding=weight.shape[-1] // 2)
    if in_scale is None:
        return _like(d_a, grad), None, None
    g = d_a * (x.float() * _channel(in_scale) + _channel(in_shift) > 0)
    return _like(g * _channel(in_scale), grad), (g * x.float()).sum(SUM_DIMS), g.sum(SUM_DIMS)


def conv_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight_shape: tuple[int, int, int, int],
                     in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                     sums_grad: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """dL/dweight of conv_forward, fp32, (C_out, C_in, k, k): sum over (B, T, F) of dL/dy (grad, or
    grad_with_sums(grad, *sums_grad)) times the (recomputed, never stored) prologue activation a."""
    grad = _full_grad(grad, sums_grad)
    a = x if in_scale is None else activate(x, in_scale, in_shift)
    return torch.nn.grad.conv2d_weight(a.float(), weight_shape, grad.float(), padding=weight_shape[-1] // 2)


def block_tail_forward(main: torch.Tensor, main_scale: torch.Tensor | None, main_shift: torch.Tensor | None,
                       shortcut: torch.Tensor, short_scale: torch.Tensor, short_shift: torch.Tensor,
                       pool: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, argmax): out = maxpool(relu(z)), z = main * main_scale + main_shift + shortcut * short_scale +
    short_shift in fp32 (main as it is when main_scale is None: an attention block's main path, already
    normalised); argmax int8 per window. pool (1, 1): out = relu(z), argmax None."""
    z = shortcut.float() * _channel(short_scale) + _channel(short_shift)
    z = z + (main.float() if main_scale is None else main.float() * _channel(main_scale) + _channel(main_shift))
    z = torch.relu(z)
    if pool == (1, 1):
        return _like(z, main), None
    out, index = F.max_pool2d(z, pool, return_indices=True)
    width = main.shape[3]
    row, col = index // width, index % width
    pt, pf = pool
    windows_t = torch.arange(out.shape[2], device=out.device).view(1, 1, -1, 1)
    windows_f = torch.arange(out.shape[3], device=out.device).view(1, 1, 1, -1)
    argmax = (row - windows_t * pt) * pf + (col - windows_f * pf)
    return _like(out, main), argmax.to(torch.int8).contiguous(memory_format=memory_format(main))


def unpool(d_out: torch.Tensor, argmax: torch.Tensor | None, out: torch.Tensor,
           shape: tuple[int, int, int, int], pool: tuple[int, int]) -> torch.Tensor:
    """dz in fp32 at the full (B, C, T, F) resolution: d_out at each window's argmax where out > 0 (the ReLU
    passed it), zero elsewhere (and in the rows and columns the pool dropped)."""
    passed = torch.where(out > 0, d_out.float(), 0.0)
    if pool == (1, 1):
        return passed
    pt, pf = pool
    b, c, t_out, f_out = out.shape
    window = torch.zeros(b, c, t_out, f_out, pt * pf, dtype=torch.float32, device=out.device)
    window.scatter_(4, argmax.long().unsqueeze(4), passed.unsqueeze(4))
    window = window.view(b, c, t_out, f_out, pt, pf).permute(0, 1, 2, 4, 3, 5).reshape(b, c, t_out * pt, f_out * pf)
    return F.pad(window, (0, shape[3] - f_out * pf, 0, shape[2] - t_out * pt))


def block_tail_backward(d_out: torch.Tensor, argmax: torch.Tensor | None, out: torch.Tensor,
                        main: torch.Tensor, main_scale: torch.Tensor | None, main_shift: torch.Tensor | None,
                        shortcut: torch.Tensor, short_scale: torch.Tensor, short_shift: torch.Tensor,
                        pool: tuple[int, int]) -> tuple:
    """The gradients of block_tail_forward's out, from d_out (dL/dout), with the scales and shifts held as
    inputs: (d_main, d_main_scale, d_main_shift, d_shortcut, d_short_scale, d_short_shift).

    With dz = unpool(...) (the gradient at z): d_main = dz * main_scale (dz when main_scale is None, and
    then d_main_scale = d_main_shift = None), d_main_scale = sum dz * main, d_main_shift = sum dz, and the
    same for the shortcut. Maps in main's dtype and memory format; sums fp32."""
    dz = unpool(d_out, argmax, out, tuple(main.shape), pool)
    d_short = _like(dz * _channel(short_scale), main)
    short_sums = ((dz * shortcut.float()).sum(SUM_DIMS), dz.sum(SUM_DIMS))
    if main_scale is None:
        return _like(dz, main), None, None, d_short, *short_sums
    return (_like(dz * _channel(main_scale), main), (dz * main.float()).sum(SUM_DIMS), dz.sum(SUM_DIMS),
            d_short, *short_sums)
