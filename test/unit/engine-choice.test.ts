// The rule behind `--engine` (README "Engines and GPUs") with stand-in probes: `auto` takes the first
// available of tensorflow, webgpu (a hardware adapter), wasm and cpu, and its line says which engine
// was passed over and why; a named engine is probed alone. The real probes run in test/claims.test.ts.
import { describe, expect, it } from 'vitest';
import { adapterVerdict, selectEngine, type EngineName, type ProbeResult } from '../../src/shared/engine/engine.js';

/** Probes that answer from a table, recording what was asked. */
function probes(table: Partial<Record<EngineName, ProbeResult | ((auto: boolean) => ProbeResult)>>) {
  const asked: string[] = [];
  const probe = async (name: EngineName, { auto }: { auto: boolean }): Promise<ProbeResult> => {
    asked.push(`${name}${auto ? ' (auto)' : ''}`);
    const r = table[name] ?? { unavailable: `no ${name} here` };
    return typeof r === 'function' ? r(auto) : r;
  };
  return { asked, probe };
}

const lavapipe = { description: 'llvmpipe: Mesa 25.0.7 (LLVM 15.0.6)', isFallbackAdapter: true };
const nvidia = { description: 'NVIDIA H100 80GB HBM3', vendor: 'nvidia', architecture: 'hopper' };

describe('--engine auto', () => {
  it('takes tensorflow first when it is there, probing nothing else', async () => {
    const p = probes({
      tensorflow: { device: 'cuda (tfjs-node-gpu)' },
      webgpu: { device: 'gpu' },
      wasm: { device: 'w' },
    });
    const s = await selectEngine('auto', p.probe);
    expect(s).toMatchObject({ name: 'tensorflow', device: 'cuda (tfjs-node-gpu)', passedOver: [] });
    expect(s.message).toBe('engine tensorflow on cuda (tfjs-node-gpu) (auto)');
    expect(p.asked).toEqual(['tensorflow (auto)']);
  });

  it('takes webgpu on a hardware adapter when tensorflow is missing, and says why tensorflow was passed over', async () => {
    const p = probes({
      tensorflow: { unavailable: 'not installed' },
      webgpu: (auto) => adapterVerdict(nvidia, auto),
      wasm: { device: 'cpu (wasm simd, 1 thread)' },
    });
    const s = await selectEngine('auto', p.probe);
    expect(s.name).toBe('webgpu');
    expect(s.message).toBe('engine webgpu on NVIDIA H100 80GB HBM3 (auto; passed over tensorflow: not installed)');
    expect(p.asked).toEqual(['tensorflow (auto)', 'webgpu (auto)']);
  });

  it('passes over a software adapter for wasm and names it; --engine webgpu takes it and says it is one', async () => {
    const table = {
      tensorflow: { unavailable: 'not installed' },
      webgpu: (auto: boolean) => adapterVerdict(lavapipe, auto),
      wasm: { device: 'cpu (wasm simd, 1 thread)' },
    };
    const auto = await selectEngine('auto', probes(table).probe);
    expect(auto.name).toBe('wasm');
    expect(auto.passedOver).toEqual([
      { engine: 'tensorflow', reason: 'not installed' },
      {
        engine: 'webgpu',
        reason: `${lavapipe.description} is a fallback (software) adapter, slower than wasm (--engine webgpu uses it anyway)`,
      },
    ]);
    expect(auto.message).toBe(
      `engine wasm on cpu (wasm simd, 1 thread) (auto; passed over tensorflow: not installed; webgpu: ${lavapipe.description} is a fallback (software) adapter, slower than wasm (--engine webgpu uses it anyway))`,
    );
    const named = probes(table);
    const webgpu = await selectEngine('webgpu', named.probe);
    expect(webgpu).toMatchObject({ name: 'webgpu', device: lavapipe.description, passedOver: [] });
    expect(webgpu.message).toBe(
      `engine webgpu on ${lavapipe.description} (${lavapipe.description} is a fallback (software) adapter: correct but slow; asked for by --engine webgpu)`,
    );
    expect(named.asked).toEqual(['webgpu']);
  });

  it('falls back to cpu when wasm fails too; with nothing available it names every reason', async () => {
    const s = await selectEngine('auto', probes({ cpu: { device: 'cpu (js)' } }).probe);
    expect(s.name).toBe('cpu');
    expect(s.passedOver.map((p) => p.engine)).toEqual(['tensorflow', 'webgpu', 'wasm']);
    await expect(selectEngine('auto', probes({}).probe)).rejects.toThrow(
      'engine "auto" is not available here: tensorflow: no tensorflow here; webgpu: no webgpu here; wasm: no wasm here; cpu: no cpu here. Use --engine wasm (always available) or --engine auto.',
    );
  });

  it('a named engine is probed alone (not as auto), without falling back', async () => {
    const p = probes({ wasm: { device: 'w' }, cpu: { device: 'c' } });
    expect((await selectEngine('cpu', p.probe)).message).toBe('engine cpu on c');
    await expect(selectEngine('webgpu', p.probe)).rejects.toThrow(
      /^engine "webgpu" is not available here: webgpu: no webgpu here\./,
    );
    expect(p.asked).toEqual(['cpu', 'webgpu']);
    await expect(selectEngine('gpu' as never, p.probe)).rejects.toThrow(
      'unknown engine "gpu": choose one of auto, tensorflow, webgpu, wasm, cpu',
    );
  });
});
