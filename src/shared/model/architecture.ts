// The TriCapsNet architecture as pure data: every layer with its parameters, output shape and
// multiply-accumulate count. Parameter creation (params.ts), the forward pass (tricapsnet.ts) and
// `tricaps model summary` all read this one description, so they cannot disagree.
//
// Shapes are NHWC without the batch dimension. SC/RC tables: ../shared/reference/tricapsnet.md.
import { UsageError } from '../errors.js';
import type { ModelConfig } from './config.js';

export type Padding = 'same' | 'valid';

export interface ParamSpec {
  /** Unique, stable name, e.g. "stem/conv/kernel"; used in checkpoints and on the wire. */
  name: string;
  shape: number[];
  /** BatchNorm moving statistics are buffers: averaged across workers, not optimised. */
  trainable: boolean;
  init: 'glorot' | 'zeros' | 'ones';
}

export interface ConvSpec {
  kind: 'conv';
  name: string;
  filters: number;
  kernel: number;
  stride: number;
  padding: Padding;
}

export interface BatchNormSpec {
  kind: 'batchnorm';
  name: string;
}

export type ActivationKind = 'relu' | 'leaky_relu';

/** A plain block: conv -> BN -> activation -> spatial dropout (SC stages, and the stem of both). */
export interface ConvBlockSpec {
  kind: 'conv_block';
  name: string;
  conv: ConvSpec;
  bn: BatchNormSpec;
  activation: ActivationKind;
  dropout: boolean;
}

/** conv3x3(s) -> BN -> LeakyReLU -> conv3x3 -> BN, plus 1x1(s) projection -> BN; add; LeakyReLU. */
export interface ResidualBlockSpec {
  kind: 'residual_block';
  name: string;
  conv1: ConvSpec;
  bn1: BatchNormSpec;
  conv2: ConvSpec;
  bn2: BatchNormSpec;
  projection: ConvSpec;
  projectionBn: BatchNormSpec;
  dropout: boolean;
}

/** Conv output (or residual output) reshaped to [-1, dim] and squashed. */
export interface PrimaryCapsulesSpec {
  kind: 'primary_capsules';
  name: string;
  /** The SC variant has its own conv here; the RC variant feeds a residual block's output. */
  conv?: ConvSpec;
  dim: number;
}

/** Class capsules: one shared transform W [inDim, classes*outDim], dynamic routing. */
export interface ClassCapsulesSpec {
  kind: 'class_capsules';
  name: string;
  classes: number;
  inDim: number;
  outDim: number;
}

export type LayerSpec = ConvBlockSpec | ResidualBlockSpec | PrimaryCapsulesSpec | ClassCapsulesSpec;

export interface LayerSummary {
  name: string;
  kind: LayerSpec['kind'];
  outputShape: number[];
  trainableParams: number;
  nonTrainableParams: number;
  /** Multiply-accumulates per image in the forward pass. */
  macs: number;
}

export interface Architecture {
  config: ModelConfig;
  inputShape: [number, number, number];
  layers: LayerSpec[];
  params: ParamSpec[];
  summary: LayerSummary[];
  /** Capsules entering routing per image, and the output shape [classes, dim]. */
  primaryCapsules: number;
  outputShape: [number, number];
}

export function convOutputSize(size: number, kernel: number, stride: number, padding: Padding): number {
  return padding === 'same' ? Math.ceil(size / stride) : Math.floor((size - kernel) / stride) + 1;
}

const channels = (base: number, width: number): number => Math.max(1, Math.round(base * width));

function conv(name: string, filters: number, kernel: number, stride: number): ConvSpec {
  return { kind: 'conv', name, filters, kernel, stride, padding: 'same' };
}

function convParams(c: ConvSpec, inChannels: number): ParamSpec[] {
  return [
    { name: `${c.name}/kernel`, shape: [c.kernel, c.kernel, inChannels, c.filters], trainable: true, init: 'glorot' },
    { name: `${c.name}/bias`, shape: [c.filters], trainable: true, init: 'zeros' },
  ];
}

function bnParams(b: BatchNormSpec, ch: number): ParamSpec[] {
  return [
    { name: `${b.name}/gamma`, shape: [ch], trainable: true, init: 'ones' },
    { name: `${b.name}/beta`, shape: [ch], trainable: true, init: 'zeros' },
    { name: `${b.name}/moving_mean`, shape: [ch], trainable: false, init: 'zeros' },
    { name: `${b.name}/moving_variance`, shape: [ch], trainable: false, init: 'ones' },
  ];
}

function convBlock(name: string, filters: number, kernel: number, activation: ActivationKind): ConvBlockSpec {
  return {
    kind: 'conv_block',
    name,
    conv: conv(`${name}/conv`, filters, kernel, 2),
    bn: { kind: 'batchnorm', name: `${name}/bn` },
    activation,
    dropout: true,
  };
}

function residualBlock(name: string, filters: number, dropout: boolean): ResidualBlockSpec {
  return {
    kind: 'residual_block',
    name,
    conv1: conv(`${name}/conv1`, filters, 3, 2),
    bn1: { kind: 'batchnorm', name: `${name}/bn1` },
    conv2: conv(`${name}/conv2`, filters, 3, 1),
    bn2: { kind: 'batchnorm', name: `${name}/bn2` },
    projection: conv(`${name}/projection`, filters, 1, 2),
    projectionBn: { kind: 'batchnorm', name: `${name}/projection_bn` },
    dropout,
  };
}

/** The layer list for a config (pure). */
export function layerSpecs(cfg: ModelConfig): LayerSpec[] {
  const w = cfg.width;
  const primaryChannels = channels(512, w);
  const stem = convBlock('stem', channels(64, w), 7, 'relu');
  const classCaps: ClassCapsulesSpec = {
    kind: 'class_capsules',
    name: 'class_capsules',
    classes: cfg.categories,
    inDim: cfg.primaryCapsuleDim,
    outDim: cfg.classCapsuleDim,
  };
  if (cfg.variant === 'sc') {
    return [
      stem,
      convBlock('block2', channels(128, w), 7, 'relu'),
      convBlock('block3', channels(64, w), 7, 'relu'),
      {
        kind: 'primary_capsules',
        name: 'primary_capsules',
        conv: conv('primary_capsules/conv', primaryChannels, 7, 2),
        dim: cfg.primaryCapsuleDim,
      },
      classCaps,
    ];
  }
  return [
    stem,
    residualBlock('block2', channels(128, w), true),
    residualBlock('block3', channels(256, w), true),
    residualBlock('block4', primaryChannels, false),
    { kind: 'primary_capsules', name: 'primary_capsules', dim: cfg.primaryCapsuleDim },
    classCaps,
  ];
}

/** Derives parameters, shapes and costs from the layer list (pure; no tensors). */
export function buildArchitecture(cfg: ModelConfig): Architecture {
  const layers = layerSpecs(cfg);
  const params: ParamSpec[] = [];
  const summary: LayerSummary[] = [];
  let [h, w, c] = [cfg.imageSize, cfg.imageSize, 3];
  let primaryCapsules = 0;
  let outputShape: [number, number] = [cfg.categories, cfg.classCapsuleDim];
  const convCost = (spec: ConvSpec, inC: number, inH: number, inW: number) => {
    const oh = convOutputSize(inH, spec.kernel, spec.stride, spec.padding);
    const ow = convOutputSize(inW, spec.kernel, spec.stride, spec.padding);
    return { oh, ow, macs: oh * ow * spec.kernel * spec.kernel * inC * spec.filters };
  };
  for (const layer of layers) {
    const before = params.length;
    let macs = 0;
    let out: number[];
    if (layer.kind === 'conv_block') {
      const k = convCost(layer.conv, c, h, w);
      params.push(...convParams(layer.conv, c), ...bnParams(layer.bn, layer.conv.filters));
      [h, w, c] = [k.oh, k.ow, layer.conv.filters];
      macs = k.macs;
      out = [h, w, c];
    } else if (layer.kind === 'residual_block') {
      const k1 = convCost(layer.conv1, c, h, w);
      const k2 = convCost(layer.conv2, layer.conv1.filters, k1.oh, k1.ow);
      const kp = convCost(layer.projection, c, h, w);
      params.push(
        ...convParams(layer.conv1, c),
        ...bnParams(layer.bn1, layer.conv1.filters),
        ...convParams(layer.conv2, layer.conv1.filters),
        ...bnParams(layer.bn2, layer.conv2.filters),
        ...convParams(layer.projection, c),
        ...bnParams(layer.projectionBn, layer.projection.filters),
      );
      [h, w, c] = [k2.oh, k2.ow, layer.conv2.filters];
      macs = k1.macs + k2.macs + kp.macs;
      out = [h, w, c];
    } else if (layer.kind === 'primary_capsules') {
      if (layer.conv) {
        const k = convCost(layer.conv, c, h, w);
        params.push(...convParams(layer.conv, c));
        [h, w, c] = [k.oh, k.ow, layer.conv.filters];
        macs = k.macs;
      }
      if (c % layer.dim !== 0) {
        throw new UsageError(
          `primary capsules: ${c} channels (512 x --width) are not divisible by the capsule dim ${layer.dim}; choose a --width or capsule dim that divides them (e.g. --width 0.125, 0.25, 0.5 or 1)`,
        );
      }
      primaryCapsules = (h * w * c) / layer.dim;
      out = [primaryCapsules, layer.dim];
    } else {
      params.push({
        name: `${layer.name}/W`,
        shape: [layer.inDim, layer.classes * layer.outDim],
        trainable: true,
        init: 'glorot',
      });
      // Factored routing (class-capsules.ts): per iteration pool the inputs by coupling and transform
      // the pooled vectors; per agreement transform back and dot with every input.
      const iterations = cfg.routingIterations;
      const pool = primaryCapsules * layer.classes * layer.inDim + layer.classes * layer.inDim * layer.outDim;
      macs = iterations * pool + (iterations - 1) * pool;
      outputShape = [layer.classes, layer.outDim];
      out = outputShape;
    }
    const mine = params.slice(before);
    const count = (p: ParamSpec) => p.shape.reduce((a, b) => a * b, 1);
    summary.push({
      name: layer.name,
      kind: layer.kind,
      outputShape: out,
      trainableParams: mine.filter((p) => p.trainable).reduce((s, p) => s + count(p), 0),
      nonTrainableParams: mine.filter((p) => !p.trainable).reduce((s, p) => s + count(p), 0),
      macs,
    });
  }
  return {
    config: cfg,
    inputShape: [cfg.imageSize, cfg.imageSize, 3],
    layers,
    params,
    summary,
    primaryCapsules,
    outputShape,
  };
}

export function parameterCounts(arch: Architecture): { total: number; trainable: number; nonTrainable: number } {
  const trainable = arch.summary.reduce((s, l) => s + l.trainableParams, 0);
  const nonTrainable = arch.summary.reduce((s, l) => s + l.nonTrainableParams, 0);
  return { total: trainable + nonTrainable, trainable, nonTrainable };
}

/** Forward multiply-accumulates per image (convolutions and capsules; BN and activations ignored). */
export function forwardMacsPerImage(arch: Architecture): number {
  return arch.summary.reduce((s, l) => s + l.macs, 0);
}
