import { stringify } from 'yaml';
import { z } from 'zod';
import { CATEGORIES, CRD_NAME, DESCRIPTION, PRINTER_COLUMNS, SCALE_PATHS } from '../api/v1alpha1/markers.ts';
import {
  GROUP,
  KIND,
  LIST_KIND,
  objectRules,
  PLURAL,
  SHORT_NAMES,
  SINGULAR,
  streamingFunctionSpecSchema,
  streamingFunctionStatusSchema,
  VERSION,
} from '../api/v1alpha1/schema.ts';

// Pure: the API in api/v1alpha1/ (zod schema and markers) → the StreamingFunction
// CustomResourceDefinition, as controller-gen does for kubebuilder. zod's JSON Schema is close
// to what Kubernetes wants; `structural` below removes the parts a structural schema forbids
// (see "Specifying a structural schema" in the Kubernetes docs).

export { CRD_NAME };

type JsonSchema = { [key: string]: unknown };

const SAFE_INTEGER_BOUNDS = new Set([Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER]);

/** Rewrites zod's JSON Schema into a structural OpenAPI v3 schema, recursively. */
export function structural(schema: JsonSchema): JsonSchema {
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key === '$schema') continue;
    // zod bounds unbounded integers by the JS safe range; that says nothing to a user.
    if ((key === 'minimum' || key === 'maximum') && SAFE_INTEGER_BOUNDS.has(value as number)) continue;
    // Strict zod objects say additionalProperties: false; structural schemas prune unknown
    // fields instead, and forbid additionalProperties next to properties.
    if (key === 'additionalProperties' && value === false) continue;
    if (key === 'properties') {
      out[key] = Object.fromEntries(
        Object.entries(value as Record<string, JsonSchema>).map(([name, sub]) => [name, structural(sub)]),
      );
    } else if (key === 'items' || (key === 'additionalProperties' && typeof value === 'object')) {
      out[key] = structural(value as JsonSchema);
    } else {
      out[key] = value;
    }
  }
  if (isPlainObject(out.default) && out.properties) out.default = completeDefault(out.default, out);
  // kubectl explain prints descriptions, not defaults.
  if (typeof out.description === 'string' && ['number', 'boolean'].includes(typeof out.default)) {
    out.description = `${out.description} Default: ${out.default}.`;
  } else if (typeof out.description === 'string' && typeof out.default === 'string' && out.default !== '') {
    out.description = `${out.description} Default: ${out.default}`;
  }
  if (out['x-kubernetes-int-or-string'] === true) intOrString(out);
  else if (out.anyOf !== undefined)
    throw new Error(`unions other than int-or-string are not structural: ${JSON.stringify(schema)}`);
  if (out.type === undefined && out['x-kubernetes-int-or-string'] !== true) {
    throw new Error(`schema without a type is not structural: ${JSON.stringify(schema)}`);
  }
  return out;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// zod writes a defaulted object's default as {}; the API server checks defaults against the CEL
// rules before nested defaulting, so the default must already hold every nested default.
function completeDefault(value: Record<string, unknown>, schema: JsonSchema): Record<string, unknown> {
  const complete = { ...value };
  for (const [name, sub] of Object.entries((schema.properties ?? {}) as Record<string, JsonSchema>)) {
    if (complete[name] === undefined && sub.default !== undefined) complete[name] = sub.default;
    if (isPlainObject(complete[name])) complete[name] = completeDefault(complete[name], sub);
  }
  return complete;
}

// The one union Kubernetes allows: anyOf [{type: integer}, {type: string}] with the
// string's value checks lifted next to it (as controller-gen writes resource quantities).
function intOrString(out: JsonSchema): void {
  const branches = out.anyOf as JsonSchema[];
  const stringBranch = branches.find((b) => b.type === 'string');
  if (stringBranch?.pattern !== undefined) out.pattern = stringBranch.pattern;
  out.anyOf = [{ type: 'integer' }, { type: 'string' }];
}

function openApi(schema: z.ZodType): JsonSchema {
  // io: 'input' keeps defaulted fields optional, as users write them.
  return structural(
    z.toJSONSchema(schema, { io: 'input', target: 'openapi-3.0', unrepresentable: 'throw' }) as JsonSchema,
  );
}

/** Field paths (spec.gpu.count, ...) of every schema in the tree that has no description. */
export function undocumentedFields(schema: JsonSchema, path = ''): string[] {
  const standard = path === 'metadata';
  const missing = path !== '' && !standard && typeof schema.description !== 'string' ? [path] : [];
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  for (const [name, sub] of Object.entries(properties))
    missing.push(...undocumentedFields(sub, path ? `${path}.${name}` : name));
  if (schema.items) missing.push(...undocumentedFields(schema.items as JsonSchema, `${path}[]`));
  if (typeof schema.additionalProperties === 'object') {
    missing.push(...undocumentedFields(schema.additionalProperties as JsonSchema, `${path}{}`));
  }
  return missing;
}

export function streamingFunctionOpenApiSchema(): JsonSchema {
  return {
    type: 'object',
    description: DESCRIPTION,
    required: ['spec'],
    properties: {
      apiVersion: { type: 'string', description: `${GROUP}/${VERSION}` },
      kind: { type: 'string', description: KIND },
      // Kubernetes allows nothing else here; kubectl explain shows ObjectMeta's own docs.
      metadata: { type: 'object' },
      spec: openApi(streamingFunctionSpecSchema),
      status: openApi(streamingFunctionStatusSchema),
    },
    'x-kubernetes-validations': objectRules,
  };
}

export function streamingFunctionCrd() {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: CRD_NAME,
      labels: { 'app.kubernetes.io/name': 'sluice', 'app.kubernetes.io/part-of': 'sluice' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: {
        plural: PLURAL,
        singular: SINGULAR,
        kind: KIND,
        listKind: LIST_KIND,
        shortNames: SHORT_NAMES,
        categories: CATEGORIES,
      },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          schema: { openAPIV3Schema: streamingFunctionOpenApiSchema() },
          subresources: { status: {}, scale: SCALE_PATHS },
          additionalPrinterColumns: PRINTER_COLUMNS,
        },
      ],
    },
  };
}

const HEADER = '# Generated by `npm run gen` from api/v1alpha1/. Do not edit.\n';

/** crds/streamingfunction.yaml */
export function crdYaml(): string {
  return HEADER + stringify(streamingFunctionCrd(), { lineWidth: 0 });
}

/** charts/sluice/templates/crd.yaml: the same CRD, gated by crds.enabled, kept by crds.keep. */
export function chartCrdTemplate(): string {
  const body = stringify(streamingFunctionCrd(), { lineWidth: 0 });
  if (body.includes('{{')) throw new Error('the CRD text contains "{{", which helm would read as a template');
  const anchor = `metadata:\n  name: ${CRD_NAME}\n`;
  if (!body.includes(anchor)) throw new Error('CRD metadata not where the chart template expects it');
  const keep =
    '  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n';
  // The header inside the condition: with crds.enabled=false the file renders empty.
  return `{{- if .Values.crds.enabled }}\n${HEADER}${body.replace(anchor, anchor + keep)}{{- end }}\n`;
}

export const GENERATED_FILES = {
  'crds/streamingfunction.yaml': crdYaml,
  'charts/sluice/templates/crd.yaml': chartCrdTemplate,
} as const;
