// The node side's certificates, signed by the plane's CA (which scripts/cluster.ts makes):
// the kubelet API's serving certificate for the node address, and the client certificate the
// API server presents to it for `kubectl logs`.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NODE_ADDRESS } from './addresses.ts';

const run = promisify(execFile);

async function sign(
  pki: string,
  name: string,
  subject: string,
  extensions: string,
  renew: boolean,
): Promise<void> {
  if (!renew && existsSync(join(pki, `${name}.crt`))) return;
  const openssl = (args: string[]) => run('openssl', args, { cwd: pki });
  await writeFile(join(pki, `${name}.ext`), extensions);
  await openssl([
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    subject,
  ]);
  await openssl([
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    'ca.crt',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    `${name}.crt`,
    '-days',
    '3650',
    '-extfile',
    `${name}.ext`,
  ]);
}

/** Made once; made again with `renew` (the CA is new). */
export async function ensureNodeCertificates(pki: string, renew = false): Promise<void> {
  await sign(
    pki,
    'kubelet',
    '/CN=sluice-kubelet',
    `subjectAltName=IP:${NODE_ADDRESS}\nextendedKeyUsage=serverAuth\n`,
    renew,
  );
  await sign(
    pki,
    'apiserver-kubelet-client',
    '/O=system:masters/CN=kube-apiserver-kubelet-client',
    'extendedKeyUsage=clientAuth\n',
    renew,
  );
}
