import { z } from 'zod';

const NATS_URL = /^(nats|tls|wss?):\/\/[^\s,/]+(\/.*)?$/;

/**
 * `--nats`: empty (map off), one NATS URL, or a comma-separated list of the servers of a NATS
 * cluster (the client learns the rest of the cluster from any of them, but needs one that
 * answers to start).
 */
export const natsServers = z
  .string()
  .refine(
    (value) =>
      value === '' || splitNatsServers(value).every((url) => NATS_URL.test(url) && URL.canParse(url)),
    'expected a nats:// URL, or several separated by commas',
  );

export function splitNatsServers(value: string): string[] {
  return value
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
}
