import { z } from 'zod';
import { MAX_JSON_DEPTH } from '../../common/limits.ts';
import { WireError, wireStatus } from '../../common/wire-errors.ts';
import { nestedDeeperThan } from '../json-depth.ts';
import type { MapOrder } from './sequencer.ts';

type MapRequestCode =
  | 'invalid_json'
  | 'json_too_deep'
  | 'invalid_map_body'
  | 'too_many_inputs'
  | 'input_too_large';

/** A map request refused before anything was queued (400 or 413, from the wire table). */
export class MapRequestError extends WireError<MapRequestCode> {
  constructor(wireCode: MapRequestCode, message: string, options?: { cause?: unknown }) {
    super('ERR_MAP_REQUEST', wireCode, message, options);
  }

  get status(): number {
    return wireStatus(this.wireCode);
  }
}

export interface MapRequest {
  /** Each input serialized once, as the function will receive it. */
  inputs: string[];
  order: MapOrder;
  /** Keep running (and resumable) when the client leaves, instead of cancelling. */
  keep: boolean;
}

export interface MapBodyLimits {
  maxInputs: number;
  /** Largest task message NATS accepts (its max_payload, less room for headers). */
  maxInputBytes: number;
}

const mapBodySchema = z.strictObject({
  inputs: z.array(z.unknown(), { error: 'must be an array of JSON values' }),
  order: z.enum(['input', 'completion'], { error: 'must be "input" or "completion"' }).default('input'),
  keep: z.boolean({ error: 'must be true or false' }).default(false),
});

function fieldOf(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return issue.keys.join(', ');
  return issue.path.length > 0 ? issue.path.join('.') : 'body';
}

/** Parses and bounds `{"inputs": [...], "order": "input" | "completion", "keep": bool}`. */
export function parseMapBody(body: Buffer, limits: MapBodyLimits): MapRequest {
  const text = body.toString('utf8');
  if (nestedDeeperThan(text, MAX_JSON_DEPTH)) {
    throw new MapRequestError(
      'json_too_deep',
      `body: arrays and objects nested more than ${MAX_JSON_DEPTH} levels deep (the limit)`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new MapRequestError('invalid_json', `body: not JSON (${(err as Error).message})`, {
      cause: err,
    });
  }
  const parsed = mapBodySchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = fieldOf(issue);
    const message =
      issue.code === 'unrecognized_keys'
        ? `${field}: unknown field (expected inputs, order, keep)`
        : `${field}: ${json === null || typeof json !== 'object' || Array.isArray(json) ? 'must be a JSON object with inputs' : issue.message}`;
    throw new MapRequestError('invalid_map_body', message, { cause: parsed.error });
  }
  const { inputs, order, keep } = parsed.data;
  if (inputs.length > limits.maxInputs) {
    throw new MapRequestError(
      'too_many_inputs',
      `inputs: ${inputs.length} inputs, more than the limit of ${limits.maxInputs} (--max-map-inputs)`,
    );
  }
  const serialized = inputs.map((input, index) => {
    const text = JSON.stringify(input);
    const bytes = Buffer.byteLength(text);
    if (bytes > limits.maxInputBytes) {
      throw new MapRequestError(
        'input_too_large',
        `inputs[${index}]: ${bytes} bytes, more than the ${limits.maxInputBytes} bytes a NATS message can carry`,
      );
    }
    return text;
  });
  return { inputs: serialized, order, keep };
}
