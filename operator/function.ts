import {
  type StreamingFunctionSpec,
  type StreamingFunctionStatus,
  withDefaults,
} from '../api/v1alpha1/schema.ts';
import { SluiceError } from '../common/errors.ts';
import type { KubeObject } from './kube.ts';

/**
 * The operator's view of one StreamingFunction: identity with every field it relies on present,
 * plus a fully defaulted spec (the API type, api/v1alpha1's StreamingFunction, leaves them optional).
 */
export interface FunctionView {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    generation: number;
    resourceVersion?: string;
    finalizers?: string[];
    deletionTimestamp?: string;
  };
  spec: StreamingFunctionSpec;
  status: StreamingFunctionStatus;
}

/** A stored spec the schema refuses (written before a rule existed): retrying will not help. */
export class InvalidSpecError extends SluiceError {
  readonly retryable = false;

  constructor(name: string, cause: unknown) {
    super('ERR_INVALID_SPEC', `spec of ${name} is invalid: ${(cause as Error).message}`, { cause });
  }
}

/**
 * The API server applies the CRD's defaults before the operator sees an object; parsing with
 * the same zod schema fills in what an object stored before a default existed lacks, and gives
 * the builders one fully typed shape.
 */
export function functionView(object: KubeObject): FunctionView {
  const m = object.metadata ?? {};
  const name = `${m.namespace}/${m.name}`;
  let spec: StreamingFunctionSpec;
  try {
    spec = withDefaults(object.spec ?? {});
  } catch (err) {
    throw new InvalidSpecError(name, err);
  }
  return {
    metadata: {
      name: m.name ?? '',
      namespace: m.namespace ?? '',
      uid: m.uid ?? '',
      generation: m.generation ?? 0,
      resourceVersion: m.resourceVersion,
      finalizers: m.finalizers,
      deletionTimestamp: m.deletionTimestamp,
    },
    spec,
    status: object.status ?? {},
  };
}
