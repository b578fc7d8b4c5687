// 2-D convolution whose gradients run on forward-convolution kernels.
//
// Why: tfjs-backend-wasm has no Conv2DBackpropFilter kernel and its Conv2DBackpropInput runs at about
// a tenth of its forward Conv2D (XNNPACK); WebGPU's backward kernels are likewise slow. Both
// gradients are themselves convolutions, so we express them as stride-1 forward convolutions:
//   - filter gradient: a convolution of the (padded) input, batch and channels swapped, with the
//     upstream gradient as a filter dilated by the stride;
//   - input gradient: per stride phase (s*s of them), a convolution of the padded upstream gradient
//     with the flipped sub-filter of that phase, interleaved back (no multiplications by inserted
//     zeros, so it costs the same as the forward pass).
// Shapes: x [N, H, W, Cin], filter [K, K, Cin, Cout], output [N, Ho, Wo, Cout] (NHWC).
import * as tf from '@tensorflow/tfjs-core';
import type { Padding } from '../model/architecture.js';
import { convOutputSize } from '../model/architecture.js';

/** How one spatial axis is padded and how much of the padded input the convolution reads. */
export interface AxisGeometry {
  size: number;
  out: number;
  padBefore: number;
  /** Extent of the padded input read by the convolution: (out - 1) * stride + kernel. */
  extent: number;
}

/** TensorFlow's padding rule for one axis (pure). */
export function axisGeometry(size: number, kernel: number, stride: number, padding: Padding): AxisGeometry {
  const out = convOutputSize(size, kernel, stride, padding);
  const extent = (out - 1) * stride + kernel;
  const padBefore = padding === 'same' ? Math.floor(Math.max(extent - size, 0) / 2) : 0;
  return { size, out, padBefore, extent };
}

/** x zero-padded (or cropped) to exactly the extent the convolution reads, [N, extentH, extentW, C]. */
function padToExtent(x: tf.Tensor4D, gh: AxisGeometry, gw: AxisGeometry): tf.Tensor4D {
  const afterH = gh.extent - gh.size - gh.padBefore;
  const afterW = gw.extent - gw.size - gw.padBefore;
  let padded = x;
  if (gh.padBefore > 0 || afterH > 0 || gw.padBefore > 0 || afterW > 0) {
    padded = tf.pad(x, [
      [0, 0],
      [gh.padBefore, Math.max(afterH, 0)],
      [gw.padBefore, Math.max(afterW, 0)],
      [0, 0],
    ]);
  }
  if (afterH < 0 || afterW < 0) {
    padded = tf.slice(padded, [0, 0, 0, 0], [-1, gh.extent, gw.extent, -1]);
  }
  return padded;
}

/** dL/dfilter as one dilated stride-1 convolution. Returns [K, K, Cin, Cout]. */
export function conv2dFilterGrad(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  kernel: number,
  stride: number,
  padding: Padding,
): tf.Tensor4D {
  return tf.tidy(() => {
    const gh = axisGeometry(x.shape[1], kernel, stride, padding);
    const gw = axisGeometry(x.shape[2], kernel, stride, padding);
    // [Cin, extentH, extentW, N]: channels become the batch, the batch becomes the channels.
    const input = tf.transpose(padToExtent(x, gh, gw), [3, 1, 2, 0]) as tf.Tensor4D;
    // [Ho, Wo, N, Cout]: the upstream gradient is the filter, dilated by the forward stride.
    const filter = tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D;
    const out = tf.conv2d(input, filter, 1, 'valid', 'NHWC', stride); // [Cin, K, K, Cout]
    return tf.transpose(out, [1, 2, 0, 3]) as tf.Tensor4D;
  });
}

/**
 * Zero-pads (positive) or crops (negative) the spatial axes of an NHWC tensor by [before, after]
 * for H and for W: at most one slice and one pad, whatever the axes need (each is a dispatch on GPUs).
 */
function padOrCrop(t: tf.Tensor4D, h: [number, number], w: [number, number]): tf.Tensor4D {
  let out = t;
  const crop = (v: number) => Math.max(-v, 0);
  if (Math.min(...h, ...w) < 0) {
    out = tf.slice(
      out,
      [0, crop(h[0]), crop(w[0]), 0],
      [-1, t.shape[1] - crop(h[0]) - crop(h[1]), t.shape[2] - crop(w[0]) - crop(w[1]), -1],
    );
  }
  if (Math.max(...h, ...w) > 0) {
    const grow = (v: number) => Math.max(v, 0);
    out = tf.pad(out, [
      [0, 0],
      [grow(h[0]), grow(h[1])],
      [grow(w[0]), grow(w[1])],
      [0, 0],
    ]);
  }
  return out;
}

/** Taps of stride phase r of a kernel: ceil((K - r) / stride), possibly 0. */
const phaseTaps = (kernel: number, stride: number, r: number) => Math.ceil((kernel - r) / stride);

/** Flat-filter indices of phase (rh, rw)'s sub-filter, [th*tw*Cout*Cin] int32; uploaded once per shape. */
const phaseIndexCache = new Map<string, tf.Tensor1D>();
function phaseIndex(kernel: number, cin: number, cout: number, stride: number, rh: number, rw: number): tf.Tensor1D {
  const key = `${tf.getBackend()} ${kernel} ${cin} ${cout} ${stride} ${rh} ${rw}`;
  let index = phaseIndexCache.get(key);
  if (!index || index.isDisposed) {
    const th = phaseTaps(kernel, stride, rh);
    const tw = phaseTaps(kernel, stride, rw);
    const values = new Int32Array(th * tw * cout * cin);
    let k = 0;
    for (let u = 0; u < th; u++) {
      for (let v = 0; v < tw; v++) {
        const tap = ((stride * (th - 1 - u) + rh) * kernel + (stride * (tw - 1 - v) + rw)) * cin * cout;
        for (let o = 0; o < cout; o++) for (let i = 0; i < cin; i++) values[k++] = tap + i * cout + o;
      }
    }
    // Kept outside any tidy scope: it lives as long as the process (a few per convolution shape).
    index = tf.keep(tf.tensor1d(values, 'int32'));
    phaseIndexCache.set(key, index);
  }
  return index;
}

/**
 * The flipped, channel-swapped sub-filter of every stride phase, [phaseH][phaseW] -> [th, tw, Cout, Cin]
 * (null where a phase has no taps): G_r[u][v][o][i] = w[stride*(th-1-u) + rh][stride*(tw-1-v) + rw][i][o].
 * Filters are small: on CPU backends they are rearranged on the host (wasm's StridedSlice, Reverse
 * and Gather kernels were slower than a host copy); on GPU backends with one gather per phase from
 * the flat filter (indices cached per shape), which keeps the data on the device in one dispatch.
 */
export function phaseFilters(
  filter: tf.Tensor4D,
  stride: number,
  onHost = tf.getBackend() === 'wasm' || tf.getBackend() === 'cpu',
): (tf.Tensor4D | null)[][] {
  const [kernel, , cin, cout] = filter.shape;
  // [K, K, Cout, Cin] on the host: each tap is then one contiguous block to copy.
  let w: Float32Array | undefined;
  if (onHost) {
    const swapped = tf.transpose(filter, [0, 1, 3, 2]);
    w = swapped.dataSync() as Float32Array;
    swapped.dispose();
  }
  const result: (tf.Tensor4D | null)[][] = [];
  for (let rh = 0; rh < stride; rh++) {
    const row: (tf.Tensor4D | null)[] = [];
    const th = phaseTaps(kernel, stride, rh);
    for (let rw = 0; rw < stride; rw++) {
      const tw = phaseTaps(kernel, stride, rw);
      if (th <= 0 || tw <= 0) {
        row.push(null);
      } else if (w) {
        const block = cout * cin;
        const out = new Float32Array(th * tw * block);
        for (let u = 0; u < th; u++) {
          for (let v = 0; v < tw; v++) {
            const src = ((stride * (th - 1 - u) + rh) * kernel + (stride * (tw - 1 - v) + rw)) * block;
            out.set(w.subarray(src, src + block), (u * tw + v) * block);
          }
        }
        row.push(tf.tensor4d(out, [th, tw, cout, cin]));
      } else {
        // One gather from the flat filter per phase (flip, phase pick and channel swap at once).
        const flat = tf.reshape(filter, [-1]);
        row.push(
          tf.reshape(tf.gather(flat, phaseIndex(kernel, cin, cout, stride, rh, rw)), [
            th,
            tw,
            cout,
            cin,
          ]) as tf.Tensor4D,
        );
      }
    }
    result.push(row);
  }
  return result;
}

/**
 * dL/dx by stride-phase decomposition. Returns [N, H, W, Cin].
 * Padded-input row j = stride*m + r receives sum_t dy[m - t] * w[stride*t + r]: for each phase r a
 * stride-1 correlation of dy with the flipped sub-filter, evaluated only for the rows m that land
 * inside the unpadded input.
 */
export function conv2dInputGrad(
  xShape: [number, number, number, number],
  filter: tf.Tensor4D,
  dy: tf.Tensor4D,
  stride: number,
  padding: Padding,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [n, h, w, cin] = xShape;
    const kernel = filter.shape[0];
    const gh = axisGeometry(h, kernel, stride, padding);
    const gw = axisGeometry(w, kernel, stride, padding);
    // Rows m in [lo, hi) cover padded rows padBefore .. padBefore + size - 1 for every phase.
    const loH = Math.floor(gh.padBefore / stride);
    const hiH = Math.ceil((gh.padBefore + h) / stride);
    const loW = Math.floor(gw.padBefore / stride);
    const hiW = Math.ceil((gw.padBefore + w) / stride);
    const [, ho, wo] = dy.shape;
    const filters = phaseFilters(filter, stride);
    const phaseRows: tf.Tensor4D[][] = filters.map((row) =>
      row.map((sub) => {
        if (!sub) return tf.fill([n, hiH - loH, hiW - loW, cin], 0) as tf.Tensor4D; // made on the device, not uploaded
        const [th, tw] = sub.shape;
        // Output row m of a valid correlation over dy padded by (th-1-lo) on top is dy-row m+lo-(th-1).
        const padded = padOrCrop(dy, [th - 1 - loH, hiH - ho], [tw - 1 - loW, hiW - wo]);
        return tf.conv2d(padded, sub, 1, 'valid');
      }),
    );
    let full: tf.Tensor4D;
    if (stride === 1) {
      full = phaseRows[0][0];
    } else {
      // [N, rows, stride, cols, stride, Cin] -> [N, rows*stride, cols*stride, Cin]
      const interleaved = tf.stack(
        phaseRows.map((row) => tf.stack(row, 3)),
        2,
      );
      full = tf.reshape(interleaved, [n, (hiH - loH) * stride, (hiW - loW) * stride, cin]);
    }
    const top = gh.padBefore - loH * stride;
    const left = gw.padBefore - loW * stride;
    if (top === 0 && left === 0 && full.shape[1] === h && full.shape[2] === w) return full; // wasm's Slice copies slowly
    return tf.slice(full, [0, top, left, 0], [n, h, w, cin]) as tf.Tensor4D;
  });
}

export interface ConvOptions {
  stride: number;
  padding: Padding;
  /** False for the network input (images): skips computing a gradient nobody reads. */
  inputGrad?: boolean;
}

/** conv2d with the fast gradients above (differentiable w.r.t. x and filter). */
export function conv2dFastGrad(x: tf.Tensor4D, filter: tf.Tensor4D, opts: ConvOptions): tf.Tensor4D {
  const { stride, padding } = opts;
  const op = tf.customGrad(((xIn: tf.Tensor, fIn: tf.Tensor, save: tf.GradSaveFunc) => {
    save([xIn, fIn]);
    return {
      value: tf.conv2d(xIn as tf.Tensor4D, fIn as tf.Tensor4D, stride, padding),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, fs] = saved as [tf.Tensor4D, tf.Tensor4D];
        const dx =
          opts.inputGrad === false
            ? tf.zerosLike(xs)
            : conv2dInputGrad(xs.shape, fs, dy as tf.Tensor4D, stride, padding);
        const df = conv2dFilterGrad(xs, dy as tf.Tensor4D, fs.shape[0], stride, padding);
        return [dx, df];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(x, filter) as tf.Tensor4D;
}
