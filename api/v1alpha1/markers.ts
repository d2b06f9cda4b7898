// What kubebuilder writes as markers on the Go type (+kubebuilder:subresource, :printcolumn,
// :resource): the resource's CRD-level declarations, beside its schema. operator/crd.ts turns
// them and the zod schema into the CustomResourceDefinition.
import { GROUP, PLURAL } from './schema.ts';

export const CRD_NAME = `${PLURAL}.${GROUP}`;

export const DESCRIPTION =
  'A streaming function: a container that answers HTTP, run on GPU nodes behind the sluice proxy, which streams responses unbuffered and fans map calls out over NATS JetStream.';

export const CATEGORIES = ['all'];

/** Where `kubectl scale` and the scale subresource read and write the replica count. */
export const SCALE_PATHS = {
  specReplicasPath: '.spec.scaling.minReplicas',
  statusReplicasPath: '.status.replicas',
  labelSelectorPath: '.status.selector',
} as const;

/** `kubectl get sfn` columns (priority 1: only with -o wide). */
export const PRINTER_COLUMNS = [
  { name: 'GPU', type: 'integer', jsonPath: '.spec.gpu.count', description: 'GPUs per replica' },
  {
    name: 'GPU-Type',
    type: 'string',
    jsonPath: '.spec.gpu.type',
    description: 'GPU product',
    priority: 1,
  },
  {
    name: 'Ready',
    type: 'string',
    jsonPath: '.status.conditions[?(@.type=="Ready")].status',
    description: 'Whether the function serves requests',
  },
  {
    name: 'Replicas',
    type: 'integer',
    jsonPath: '.status.readyReplicas',
    description: 'Ready replicas',
  },
  {
    name: 'URL',
    type: 'string',
    jsonPath: '.status.url',
    description: 'Where to curl the function',
  },
  {
    name: 'Reason',
    type: 'string',
    jsonPath: '.status.conditions[?(@.type=="Ready")].reason',
    description: 'Why the function is (not) ready',
    priority: 1,
  },
  { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
];
