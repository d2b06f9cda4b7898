import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import {
  ingressPath,
  parseStreamingFunction,
  streamingFunctionSchema,
  withDefaults,
} from '../api/v1alpha1/schema.ts';
import {
  chartCrdTemplate,
  GENERATED_FILES,
  streamingFunctionCrd,
  streamingFunctionOpenApiSchema,
  structural,
  undocumentedFields,
} from '../operator/crd.ts';
import { fullSpec, invalidCases, streamingFunction } from './crd-cases.ts';

// The CRD without a cluster: generated files current, structural, documented; and the zod
// schema refusing the same table of bad StreamingFunctions the API server refuses.

const root = join(import.meta.dirname, '..');

function issuePaths(error: z.ZodError): string[] {
  return error.issues.map((issue) =>
    issue.path
      .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
      .join(''),
  );
}

describe('generated CRD files', () => {
  it.each(Object.entries(GENERATED_FILES))(
    '%s matches operator/schema.ts (run npm run gen)',
    async (path, render) => {
      expect(await readFile(join(root, path), 'utf8')).toBe(render());
    },
  );

  it('the chart copy is gated by crds.enabled and kept on uninstall by crds.keep', () => {
    const template = chartCrdTemplate();
    expect(template).toMatch(/^\{\{- if \.Values\.crds\.enabled \}\}\n# Generated/);
    expect(template.trimEnd().endsWith('{{- end }}')).toBe(true);
    expect(template).toContain(
      '  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n',
    );
  });
});

describe('CRD schema', () => {
  const schema = streamingFunctionOpenApiSchema();

  it('has a description on every field', () => {
    expect(undocumentedFields(schema)).toEqual([]);
  });

  it('is structural: no $ref, no unions but int-or-string, a type everywhere', () => {
    const text = JSON.stringify(schema);
    expect(text).not.toContain('$ref');
    expect(text).not.toContain('"additionalProperties":false');
    expect(() => structural({ anyOf: [{ type: 'string' }, { type: 'boolean' }] })).toThrow(/not structural/);
    expect(() => structural({ description: 'no type' })).toThrow(/without a type/);
  });

  it('gives objects complete defaults, so the API server can check them against the CEL rules', () => {
    const spec = (schema.properties as Record<string, { properties: Record<string, { default?: unknown }> }>)
      .spec;
    expect(spec?.properties.scaling?.default).toEqual(withDefaults({ image: 'x' }).scaling);
    expect(spec?.properties.streaming?.default).toEqual(withDefaults({ image: 'x' }).streaming);
  });

  it('declares the status and scale subresources, short name, category and printer columns', () => {
    const crd = streamingFunctionCrd();
    const version = crd.spec.versions[0];
    expect(version?.subresources).toEqual({
      status: {},
      scale: {
        specReplicasPath: '.spec.scaling.minReplicas',
        statusReplicasPath: '.status.replicas',
        labelSelectorPath: '.status.selector',
      },
    });
    expect(crd.spec.names).toMatchObject({
      shortNames: ['sfn'],
      categories: ['all'],
      kind: 'StreamingFunction',
    });
    expect(version?.additionalPrinterColumns.filter((c) => !c.priority).map((c) => c.name)).toEqual([
      'GPU',
      'Ready',
      'Replicas',
      'URL',
      'Age',
    ]);
  });
});

describe('zod schema (what sluice serve and the operator parse with)', () => {
  it('applies the defaults of SPEC §1', () => {
    expect(withDefaults({ image: 'i' })).toEqual({
      image: 'i',
      port: 9000,
      protocol: 'http',
      gpu: { count: 0, resourceName: 'nvidia.com/gpu', type: '' },
      scaling: { minReplicas: 1, maxReplicas: 1, concurrency: 8, queueTimeoutSeconds: 30 },
      streaming: { heartbeatSeconds: 15, idleTimeoutSeconds: 600, maxDurationSeconds: 3600 },
      map: { enabled: true, path: '/', ackWaitSeconds: 60, maxDeliver: 3, resultRetentionSeconds: 600 },
      ingress: { enabled: true },
    });
  });

  it('keeps every field of a full spec as written', () => {
    expect(withDefaults(fullSpec)).toEqual(fullSpec);
  });

  it('defaults the ingress path to /<name>', () => {
    expect(ingressPath(parseStreamingFunction(streamingFunction('echo', { image: 'i' })))).toBe('/echo');
    expect(ingressPath(parseStreamingFunction(streamingFunction('echo', fullSpec)))).toBe('/llm');
  });

  it('refuses unknown fields (a typo in a local YAML file must not pass silently)', () => {
    const result = streamingFunctionSchema.safeParse(streamingFunction('echo', { image: 'i', gpus: 1 }));
    expect(result.success).toBe(false);
  });

  it.each(invalidCases)('refuses: $why ($path)', ({ spec, path, message, name }) => {
    const result = streamingFunctionSchema.safeParse(streamingFunction(name ?? 'fn', spec));
    expect(result.success).toBe(false);
    if (result.success) return;
    const paths = issuePaths(result.error);
    expect(
      paths.some((p) => path.startsWith(p) && p !== ''),
      `${paths.join(', ')} should lead to ${path}`,
    ).toBe(true);
    if (message) expect(result.error.issues.map((i) => i.message).join('\n')).toContain(message);
  });
});
