// The version reported by `tricaps --version` and on the info metric.
export const TRICAPS_VERSION = '0.1.0';
